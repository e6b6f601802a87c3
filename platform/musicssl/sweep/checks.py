"""What a trial, probe job or label step would only find out later, checked before anything starts.

`check_sweep` runs under `--check` and at the start of every sweep, before Ray, data preparation or MLflow:
probe task names, dataset roots and their layouts (a quick look at the adapter's files, no decoding), manifests
and label files, imported checkpoints, layer counts against the encoder, mask spans against the crop, the probe
schedule and the scheduler. `check_cluster` runs as soon as Ray is up: every request must fit on one node.
Each problem names the dotted path of the sweep file that set the value.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from musicssl.config import ExperimentConfig
from musicssl.sweep.spec import Sweep, Trial


def check_sweep(sweep: Sweep) -> list[str]:
    """Every problem of every trial (deduplicated), each as `dotted.path: message`."""
    problems: list[str] = []
    roots_seen: dict[tuple[str, str], str | None] = {}
    done: set[str] = set()
    for trial in sweep.trials:
        if trial.cell in done:
            continue
        done.add(trial.cell)
        where = _where(sweep, trial)
        exp = trial.experiment
        problems += _check_tasks(exp, where, roots_seen)
        if trial.checkpoint is not None:
            problems += _check_imported(trial, where)
            continue
        problems += _check_model(exp, where)
        problems += _check_data(exp, where)
    problems += _check_schedule(sweep)
    return list(dict.fromkeys(problems))


def _where(sweep: Sweep, trial: Trial) -> Callable[[str], str]:
    """dotted experiment key -> the sweep-file path that set it for this trial."""
    cfg = sweep.cfg
    changes = cfg.variants.get(trial.variant_name, {})

    def where(key: str) -> str:
        if key in changes:
            return f"variants.{trial.variant_name}.{key}"
        if key in cfg.grid:
            return f"grid.{key}"
        if key == "probe.tasks" and cfg.probe.tasks is not None:
            return "probe.tasks"
        if key.startswith("probe.data_roots.") and key.removeprefix("probe.data_roots.") in cfg.probe.data_roots:
            return key
        if trial.checkpoint is not None and key == "checkpoint":
            return f"checkpoints.{trial.variant_name}"
        return f"base.{key}"

    return where


def _check_tasks(exp: ExperimentConfig, where: Callable[[str], str],
                 roots_seen: dict[tuple[str, str], str | None]) -> list[str]:
    from musicssl.probe.tasks import TASKS

    problems = []
    for i, name in enumerate(exp.probe.tasks):
        task = TASKS.get(name)
        if task is None:
            hint = difflib.get_close_matches(name, list(TASKS), n=1)
            problems.append(f"{where('probe.tasks')}[{i}]: unknown probe task {name!r}"
                            + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(sorted(TASKS))}"))
            continue
        if task.synthetic:
            continue
        root = exp.probe.data_roots.get(name)
        if root is None:
            problems.append(f"probe.data_roots.{name}: task {name!r} needs its dataset root: add "
                            f"probe.data_roots.{name}=/path/to/dataset to the command (or run with --smoke, which "
                            "probes a synthetic stand-in)")
            continue
        key = (name, root)
        if key not in roots_seen:
            roots_seen[key] = _layout_problem(task, Path(root))
        if roots_seen[key]:
            problems.append(f"{where(f'probe.data_roots.{name}')}: {roots_seen[key]}")
    for name in exp.probe.data_roots:
        if name not in TASKS:
            hint = difflib.get_close_matches(name, list(TASKS), n=1)
            problems.append(f"{where(f'probe.data_roots.{name}')}: unknown probe task {name!r}"
                            + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return problems


def _layout_problem(task: Any, root: Path) -> str | None:
    """None when the adapter finds its files under `root` (annotations read, audio files present, nothing decoded)."""
    if not root.is_dir():
        return f"{root}: dataset root of {task.name!r} is not a folder"
    try:
        examples = task.load(root, task)
    except (OSError, ValueError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
    except Exception as exc:  # e.g. valid JSON of the wrong shape: still "cannot probe this root", not a traceback
        return f"{root}: the {task.name!r} adapter cannot read this dataset ({type(exc).__name__}: {exc})"
    if not examples:
        return f"{root}: the {task.name!r} adapter found no labelled clips"
    counts = [sum(e.split == s for e in examples) for s in ("train", "valid", "test")]
    if not all(counts):  # the probe stops on this too, but only after pretraining
        return (f"{root}: the {task.name!r} adapter found {counts[0]} train, {counts[1]} valid and {counts[2]} test "
                "clips; a probe needs all three splits")
    return None


def _check_model(exp: ExperimentConfig, where: Callable[[str], str]) -> list[str]:
    from musicssl.models.encoder import num_frames

    enc, problems = exp.model.encoder, []
    layers = enc.num_layers
    if exp.model.paradigm == "music2vec" and exp.model.music2vec.average_top_k_layers > layers:
        k = exp.model.music2vec.average_top_k_layers
        problems.append(f"{where('model.music2vec.average_top_k_layers')}: {k} is more than the encoder's {layers} "
                        "layers (the targets would silently average fewer)")
    if isinstance(exp.probe.layers, int) and not 0 <= exp.probe.layers <= layers:
        problems.append(f"{where('probe.layers')}: hidden state {exp.probe.layers} is out of range: the encoder has "
                        f"states 0..{layers} (0 = the projected CNN features)")
    frames = num_frames(exp.data.max_sample_size, enc)
    if exp.model.mask_length >= frames:
        problems.append(f"{where('model.mask_length')}: a span of {exp.model.mask_length} frames does not fit a crop "
                        f"of data.max_sample_size={exp.data.max_sample_size} samples ({frames} frames)")
    h = exp.model.hubert
    if exp.model.paradigm == "musichubert" and h.label_source == "model" and h.label_model and not exp.data.labels:
        problems += _check_label_model(Path(h.label_model), h.label_layer, where)
    return problems


def _check_label_model(path: Path, layer: int, where: Callable[[str], str]) -> list[str]:
    layers = _checkpoint_layers(path)
    if isinstance(layers, str):
        return [f"{where('model.hubert.label_model')}: {layers}"]
    if layers is not None and not 1 <= layer <= layers:
        return [f"{where('model.hubert.label_layer')}: layer {layer} is out of range: the label model has layers "
                f"1..{layers}"]
    return []


def _checkpoint_layers(path: Path) -> int | str | None:
    """Transformer layers of a checkpoint (musicssl folder, Hugging Face folder, fairseq .pt), or a problem."""
    try:
        return _read_checkpoint_layers(path)
    except Exception as exc:  # a missing, corrupt or odd config.json / cfg: a problem line, not a traceback
        return f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})"


def _read_checkpoint_layers(path: Path) -> int | str | None:
    if path.is_dir() and (path / "encoder.safetensors").exists():
        return int(json.loads((path / "config.json").read_text())["model"]["encoder"]["num_layers"])
    if path.is_dir() and (path / "config.json").exists():
        hf = json.loads((path / "config.json").read_text())
        if not any((path / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
            return f"{path}: Hugging Face folder without model.safetensors or pytorch_model.bin"
        return int(hf.get("num_hidden_layers", 0)) or None
    if path.is_file():
        from musicssl.models.convert import load_fairseq

        try:
            cfg = load_fairseq(path)["cfg"]
        except Exception as exc:  # a corrupt or foreign file: say so here, not after pretraining
            return f"{path}: not a readable fairseq checkpoint ({type(exc).__name__}: {exc})"
        return int(cfg.get("model", {}).get("encoder_layers", 0)) or None
    if not path.exists():
        return f"{path}: no such checkpoint"
    return f"{path}: not a musicssl checkpoint folder, a Hugging Face model folder or a fairseq .pt file"


def _check_imported(trial: Trial, where: Callable[[str], str]) -> list[str]:
    if not trial.checkpoint:  # `name: null` in the file: reported with the dataset roots, not before them
        return [f"{where('checkpoint')}: give the path of this checkpoint ({where('checkpoint')}=/path/to/model)"]
    layers = _checkpoint_layers(Path(str(trial.checkpoint)))
    if isinstance(layers, str):
        return [f"{where('checkpoint')}: {layers}"]
    probe_layer = trial.experiment.probe.layers
    if isinstance(probe_layer, int) and layers is not None and probe_layer > layers:
        return [f"{where('probe.layers')}: hidden state {probe_layer} is out of range for {trial.checkpoint} "
                f"(states 0..{layers})"]
    return []


def _check_data(exp: ExperimentConfig, where: Callable[[str], str]) -> list[str]:
    from musicssl.data.manifest import read_manifest

    problems, rows = [], None
    if exp.data.manifest is not None:
        try:
            rows = len(read_manifest(exp.data.manifest))
        except Exception as exc:  # ManifestError, OSError, UnicodeDecodeError: all mean "cannot train on this"
            problems.append(f"{where('data.manifest')}: {exc}")
    if exp.data.labels is not None:
        km = Path(exp.data.labels)
        if not km.is_file():
            problems.append(f"{where('data.labels')}: {km}: label file not found")
        elif not (km.parent / "dict.km.txt").is_file():
            problems.append(f"{where('data.labels')}: {km.parent / 'dict.km.txt'}: the dictionary beside the labels "
                            "is missing")
        else:
            try:
                lines = sum(1 for _ in km.open())
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{where('data.labels')}: {km}: unreadable ({exc})")
            else:
                if rows is not None and lines != rows:
                    problems.append(f"{where('data.labels')}: {km} has {lines} lines but the manifest has {rows} "
                                    "files (one label line per manifest row)")
    return problems


def _check_schedule(sweep: Sweep) -> list[str]:
    cfg = sweep.cfg
    problems: list[str] = []
    trials = [t for t in sweep.trials if t.checkpoint is None]
    if not trials:
        return problems
    longest = max(t.experiment.pretrain.max_steps for t in trials)
    late = [s for s in cfg.probe.at_steps if s > longest]
    if late:
        problems.append(f"probe.at_steps: {late} are past every trial's pretrain.max_steps (at most {longest})")
    if cfg.probe.every_steps and cfg.probe.every_steps > longest:
        problems.append(f"probe.every_steps: {cfg.probe.every_steps} is past every trial's pretrain.max_steps "
                        f"({longest}); only the final checkpoint would be probed")
    if cfg.scheduler.type == "asha":
        metric = cfg.scheduler.metric
        for t in trials:
            if metric != "average" and metric not in t.experiment.probe.tasks:
                problems.append(f"scheduler.metric: {metric!r} is neither 'average' nor a probe task of {t.variant} "
                                f"({', '.join(t.experiment.probe.tasks)})")
                break
        if cfg.scheduler.grace_steps >= longest:
            problems.append(f"scheduler.grace_steps: {cfg.scheduler.grace_steps} leaves ASHA nothing to stop "
                            f"(trials run {longest} steps)")
        if all(len(t.probe_steps) < 2 for t in trials):
            problems.append("scheduler: ASHA acts on probe results during training; set probe.every_steps or "
                            "probe.at_steps below pretrain.max_steps")
    return problems


def check_cluster(sweep: Sweep, nodes: list[Mapping[str, Any]]) -> list[str]:
    """Requests that no single alive node of the Ray cluster can ever satisfy (`nodes` = `ray.nodes()`)."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    res, probe = sweep.cfg.resources, sweep.cfg.probe

    def fits(cpu: float, gpu: float) -> int:
        """How many such bundles the nodes hold at most (each bundle on one node)."""
        total = 0
        for r in alive:
            n_cpu = r.get("CPU", 0) // cpu if cpu else float("inf")
            n_gpu = r.get("GPU", 0) // gpu if gpu else float("inf")
            total += int(min(n_cpu, n_gpu, 10**6))
        return total

    shape = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in alive) or "no alive node"
    problems = []
    if any(t.checkpoint is None for t in sweep.trials):
        need = fits(res.cpus_per_trial, res.gpus_per_trial)
        if need < res.workers_per_trial:
            what = "a trial worker" if res.workers_per_trial > 1 else "a trial"
            problems.append(f"resources: {what} needs {res.cpus_per_trial:g} CPU and {res.gpus_per_trial:g} GPU on one "
                            f"node (x{res.workers_per_trial} workers); the cluster's nodes have {shape}: trials would "
                            "wait forever. Lower resources.cpus_per_trial / gpus_per_trial or add nodes")
    if fits(probe.cpus, probe.gpus) < 1:
        problems.append(f"probe: a probe job needs {probe.cpus:g} CPU and {probe.gpus:g} GPU on one node; the "
                        f"cluster's nodes have {shape}. Lower probe.cpus / probe.gpus or add nodes")
    return problems


def load_checked(path: str | Path, overrides: Iterable[str] = (), *, smoke: bool = False,
                 state_dir: Path | None = None) -> Sweep:
    """`load_sweep` + `check_sweep`: a `ConfigError` with every problem of every stage, or a sweep ready to run.

    When the file itself has problems, the values they are about are set aside (up to 5 rounds) and the rest of the
    sweep still goes through `check_sweep`, so a typo in one section does not hide a missing dataset root.
    """
    from musicssl.config_io import ConfigError
    from musicssl.sweep.spec import read_sweep_data, sweep_from_data, without

    data = read_sweep_data(path, overrides, smoke=smoke)
    try:
        sweep = sweep_from_data(data, str(path), smoke=smoke, state_dir=state_dir)
    except ConfigError as exc:
        later = _checks_past(data, exc.problems, str(path), smoke, state_dir, sweep_from_data, without)
        raise ConfigError(exc.source, exc.problems + [p for p in later if p not in exc.problems]) from None
    problems = check_sweep(sweep)
    if problems:
        raise ConfigError(sweep.source, problems)
    return sweep


def _checks_past(data: dict[str, Any], problems: list[str], source: str, smoke: bool, state_dir: Path | None,
                 sweep_from_data: Callable[..., Sweep], without: Callable[[dict[str, Any], str], bool]) -> list[str]:
    """Problems of later stages, found once the values `problems` are about are set aside: those of the file's
    other sections, then `check_sweep`'s."""
    import copy

    from musicssl.config_io import ConfigError

    def where(problem: str) -> str:
        return problem.split(": ", 1)[0]

    reduced, said = copy.deepcopy(data), {where(p) for p in problems}
    found: list[str] = []
    for _ in range(5):
        if not [p for p in problems if without(reduced, p)]:
            break
        try:
            return found + check_sweep(sweep_from_data(reduced, source, smoke=smoke, state_dir=state_dir))
        except ConfigError as exc:
            problems = exc.problems
            # not the artifacts of a removal: "field required" where a bad value was, two variants now equal
            found += [p for p in problems if where(p) not in said and "the same experiment as" not in p]
            said |= {where(p) for p in problems}
    return found
