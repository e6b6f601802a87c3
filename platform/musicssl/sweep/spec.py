"""Sweep files: a base experiment, named variants around a baseline, a grid, seeds, a probe schedule, a scheduler.

A paper table is a set of one-factor changes around a baseline; that is what `variants` say:

    baseline: vanilla
    variants:
      vanilla: {}                            # the baseline: no changes
      span5: {model.mask_length: 5}
      prob50: {model.mask_prob: 0.5}

Variants combine with the `grid` (cartesian) and the `seeds`. `load_sweep` reads the file, applies `--smoke`
(sweep/smoke.py) and the command-line overrides (the same dotted syntax: `grid.model.mask_prob=[0.5]`,
`variants.span5.model.mask_length=7`, `variants.span5=null` drops a variant), validates everything and expands
the trials; `sweep/checks.py` then checks what the trials would only find out later (tasks, dataset roots,
manifests, layer counts, ...). All problems are reported at once with their dotted paths. The file's typed
sections are `sweep/schema.py`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from musicssl.config import ExperimentConfig, ProbeConfig, deep_merge
from musicssl.config_io import (
    ConfigError,
    dotted_paths,
    flatten,
    format_errors,
    load_yaml,
    parse,
    parse_overrides,
    set_dotted,
)
from musicssl.sweep.schema import NAME_PATTERN, ProbeScheduleConfig, SweepConfig


@dataclass(frozen=True)
class Trial:
    """One pretraining run (or, in a probe-only sweep, one imported checkpoint) of the sweep."""

    variant: str  # label of the variant x grid point, e.g. "span5" or "vanilla, mask_prob=0.5"
    cell: str  # hash of the experiment config without the seed
    seed: int
    factors: dict[str, Any]
    experiment: ExperimentConfig
    variant_name: str = ""  # the `variants` entry (empty without variants)
    baseline: bool = False
    checkpoint: str | None = None  # probe-only sweeps: the imported checkpoint
    probe_steps: tuple[int, ...] = ()  # checkpoints probed besides the final one

    @property
    def key(self) -> str:
        """Stable id of the trial (cell + seed): names its folder and tags its MLflow run."""
        return f"{self.cell}-s{self.seed}"


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its config, source file, expanded trials and the data they came from."""

    cfg: SweepConfig
    source: str
    trials: list[Trial]
    smoke: bool = False
    raw: dict[str, Any] = field(default_factory=dict)  # the resolved sweep file (after smoke and overrides)

    @property
    def factors(self) -> list[str]:
        """Dotted keys the sweep varies: every key a variant changes, then the grid axes."""
        keys = [k for changes in self.cfg.variants.values() for k in changes]
        return list(dict.fromkeys([*keys, *self.cfg.grid]))


def load_sweep(path: str | Path, overrides: Iterable[str] = (), *, smoke: bool = False,
               state_dir: Path | None = None) -> Sweep:
    """Read, (shrink,) override, validate and expand a sweep file; raise `ConfigError` listing every problem.

    `state_dir` is where a `label_model` reference of an earlier sweep is looked up (MusicHuBERT iteration 2).
    """
    return sweep_from_data(read_sweep_data(path, overrides, smoke=smoke), str(path), smoke=smoke, state_dir=state_dir)


def read_sweep_data(path: str | Path, overrides: Iterable[str] = (), *, smoke: bool = False) -> dict[str, Any]:
    """The sweep file's raw data after `--smoke` and the command-line overrides (YAML and override errors raise)."""
    data = load_yaml(path)
    if smoke:
        from musicssl.sweep.smoke import shrink

        given = flatten(apply_overrides({}, overrides))  # dataset roots on the command line keep their real tasks
        roots = {k.rsplit(".", 1)[1]: v for k, v in given.items()
                 if k.startswith(("probe.data_roots.", "base.probe.data_roots."))}
        data = shrink(data, str(path), roots)
    return apply_overrides(data, overrides)


def sweep_from_data(data: dict[str, Any], source: str, *, smoke: bool = False, state_dir: Path | None = None) -> Sweep:
    """Validate and expand raw sweep data (see `read_sweep_data`); raise `ConfigError` listing every problem."""
    data = copy.deepcopy(data)
    if isinstance(data.get("variants"), Mapping):  # `vanilla:` with nothing after it is the empty change set
        data["variants"] = {k: {} if v is None else v for k, v in data["variants"].items()}
    problems = non_finite(data)
    problems += probe_settings_into_base(data)
    cfg = parse_or_collect(data, source, problems)
    data["variants"] = {k: flatten(v) for k, v in (data.get("variants") or {}).items()}
    cfg = cfg.model_copy(update={"variants": data["variants"]})
    if cfg.label_model is not None:
        from musicssl.sweep.stages import resolve_label_model

        path_or_problem = resolve_label_model(cfg.label_model, state_dir)
        if path_or_problem.startswith("label_model"):
            problems.append(path_or_problem)
            path_or_problem = f"{cfg.label_model.sweep}/{cfg.label_model.variant} (not found)"
        cfg = cfg.model_copy(update={"base": set_dotted(cfg.base, "model.hubert.label_model", path_or_problem)})
    problems += _check_structure(cfg)
    if problems:
        raise ConfigError(source, problems)
    trials = expand(cfg, source)
    return Sweep(cfg, source, trials, smoke, data)


def is_probe_setting(key: str) -> bool:
    """A key of the sweep's `probe:` section that is an experiment's probe setting (ProbeConfig), not the schedule's
    own (tasks and data_roots are both, and stay with the schedule, which writes them into base.probe)."""
    return key in ProbeConfig.model_fields and key not in ProbeScheduleConfig.model_fields


def probe_settings_into_base(data: dict[str, Any]) -> list[str]:
    """Move the probe settings of the sweep's `probe:` section (`probe.lr`, `probe.standardize`, ... : the
    experiment's own paths, as `musicssl pretrain`, `probe` and `probe tune` take them) into `base.probe`, where every
    trial reads them; the schedule's own keys stay. A setting given both ways with two values is a problem line."""
    section = data.get("probe")
    if not isinstance(section, dict):
        return []
    moved = {k: section.pop(k) for k in list(section) if is_probe_setting(k)}
    if not moved:
        return []
    raw_base = data.get("base")
    base: dict[str, Any] = raw_base if isinstance(raw_base, dict) else {}
    raw_probe = base.get("probe")
    given: dict[str, Any] = raw_probe if isinstance(raw_probe, dict) else {}
    problems = [f"probe.{k}: set to {v!r} here and to {given[k]!r} in base.probe.{k}; keep one"
                for k, v in moved.items() if k in given and given[k] != v]
    data["base"] = {**base, "probe": {**given, **moved}}
    return problems


def without(data: dict[str, Any], problem: str) -> bool:
    """Remove from `data` the value a problem line (`dotted.path: message`) is about; False if there is none.

    Used to look past a broken section: the rest of the sweep is still checked (sweep/checks.py `load_checked`).
    """
    path = re.sub(r"\[\d+\]$", "", problem.split(": ", 1)[0].strip())
    head, _, rest = path.partition(".")
    if head == "baseline":  # without a usable baseline the variants cannot be read: check the base alone
        return data.pop("baseline", None) is not None or data.pop("variants", None) is not None
    variants = data.get("variants")
    if head not in data and isinstance(variants, dict) and path in variants:  # an expansion problem of a variant
        del variants[path]
        return True
    if head not in data:
        return False
    if not rest:
        del data[head]
        return True
    section = data[head]
    if head == "grid" and isinstance(section, dict) and rest in section:
        del section[rest]
        return True
    if head == "variants" and isinstance(section, dict):
        name, _, key = rest.partition(".")
        if not key or not isinstance(section.get(name), dict) or key not in flatten(section[name]):
            return section.pop(name, None) is not None
        section[name] = {k: v for k, v in flatten(section[name]).items() if k != key}
        return True
    node: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and parts[-1] in node:
        del node[parts[-1]]
        return True
    return False


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Command-line `KEY=VALUE` overrides in the file's own syntax.

    `grid.<dotted key>=[...]` sets a grid axis (`=null` drops it); `variants.<name>.<dotted key>=value` sets one
    change of a variant, `variants.<name>={}` adds a variant, `variants.<name>=null` drops one; everything else
    is a nested dotted path (`base.pretrain.max_steps=50`, `probe.every_steps=100`, `seeds=[0,1,2]`); a probe
    setting (`probe.lr=5e-3`, any ProbeConfig field the schedule does not have) sets `base.probe.<field>`.
    """
    out = dict(data)
    plain, bad = [], []
    for item in overrides:
        key, sep, raw = item.partition("=")
        head, _, rest = key.strip().partition(".")
        if not sep or head not in ("grid", "variants") or not rest:
            if head == "probe" and is_probe_setting(rest.partition(".")[0]):
                item = f"base.{item.strip()}"  # the command line wins over the file's base.probe
            plain.append(item)
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            bad.append(f"{item!r}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc})")
            continue
        section = dict(out[head]) if isinstance(out.get(head), Mapping) else {}
        if head == "grid":
            _set_or_drop(section, rest, value)
        else:
            name, _, change = rest.partition(".")
            if not change:
                _set_or_drop(section, name, value)
            else:
                current = section.get(name)
                changes = dict(flatten(current)) if isinstance(current, Mapping) else {}
                changes[change] = value
                section[name] = changes
        out[head] = section
    try:
        merged = parse_overrides(plain)
    except ConfigError as exc:
        bad += exc.problems
    if bad:
        raise ConfigError("command line", bad)
    return deep_merge(out, merged)


def _set_or_drop(section: dict[str, Any], key: str, value: Any) -> None:
    if value is None:
        section.pop(key, None)
    else:
        section[key] = value


def non_finite(data: Any, path: str = "") -> list[str]:
    """`path: must be a finite number, got nan` for every NaN or infinity anywhere in `data`."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{path or '(top level)'}: must be a finite number, got {data}"]
    if isinstance(data, Mapping):
        return [p for k, v in data.items() for p in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in non_finite(v, f"{path}[{i}]")]
    return []


def parse_or_collect(data: dict[str, Any], source: str, problems: list[str]) -> SweepConfig:
    """`SweepConfig` of `data`; its problems plus `problems` are raised together."""
    try:
        cfg = parse(SweepConfig, data, source)
    except ConfigError as exc:
        raise ConfigError(source, problems + exc.problems) from None
    return cfg


def _check_structure(cfg: SweepConfig) -> list[str]:
    """Keys and values of base, variants and grid against ExperimentConfig; baseline; probe-only sweeps."""
    problems: list[str] = []
    try:
        ExperimentConfig.model_validate(cfg.base)
    except ValidationError as exc:
        problems += format_errors(ExperimentConfig, exc, "base")
    known = dotted_paths(ExperimentConfig)
    sections = [(f"variants.{name}", changes, False) for name, changes in cfg.variants.items()]
    sections.append(("grid", cfg.grid, True))
    for prefix, section, is_grid in sections:
        for key, values in section.items():
            if not _known_key(key, known):
                hint = difflib.get_close_matches(key, list(known), n=1)
                problems.append(f"{prefix}.{key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
                continue
            if is_grid and not values:
                problems.append(f"grid.{key}: needs at least one value")
            for label, value in (enumerate(values) if is_grid else [(None, values)]):
                where = f"{prefix}.{key}" + (f"[{label}]" if label is not None else "")
                try:
                    ExperimentConfig.model_validate(set_dotted(cfg.base, key, value))
                except ValidationError as exc:
                    own = [p for p in format_errors(ExperimentConfig, exc) if p.startswith(key + ":")]
                    problems += [f"{where}: " + p.removeprefix(key + ": ") for p in own]
    if cfg.variants:
        if cfg.baseline is None:
            empty = [n for n, c in cfg.variants.items() if not c]
            problems.append("baseline: name the variant every other one is compared with"
                            + (f" (e.g. baseline: {empty[0]})" if empty else " (a variant with no changes: {})"))
        elif cfg.baseline not in cfg.variants:
            hint = difflib.get_close_matches(cfg.baseline, list(cfg.variants), n=1)
            problems.append(f"baseline: {cfg.baseline!r} is not a variant"
                            + (f" (did you mean {hint[0]!r}?)" if hint else f"; variants: {', '.join(cfg.variants)}"))
        elif cfg.variants[cfg.baseline]:
            problems.append(f"variants.{cfg.baseline}: the baseline changes nothing, got {cfg.variants[cfg.baseline]}; "
                            "move the change to base or to another variant")
        problems += [f"variants.{n}: a variant name is letters, digits, '_', '+' or '-'"
                     for n in cfg.variants if not re.match(NAME_PATTERN, n)]
    elif cfg.baseline is not None:
        problems.append(f"baseline: {cfg.baseline!r} names a variant, but the sweep has no variants")
    if cfg.checkpoints and (cfg.variants or cfg.grid):  # a null path is asked for by checks.py, with the roots
        problems.append("checkpoints: a probe-only sweep probes imported checkpoints; it has no variants or grid")
    if cfg.probe.tasks is not None:  # the sweep-level list would silently replace a variant's or grid point's own
        varied = [f"variants.{n}.probe.tasks" for n, c in cfg.variants.items() if "probe.tasks" in c]
        varied += ["grid.probe.tasks"] if "probe.tasks" in cfg.grid else []
        problems += [f"{where}: probe.tasks is set for the whole sweep (probe.tasks); vary it here only without it"
                     for where in varied]
        if not cfg.probe.tasks:
            problems.append("probe.tasks: needs at least one probe task")
    return problems


def _known_key(key: str, known: Mapping[str, Any]) -> bool:
    """A leaf of ExperimentConfig, or an entry of a dict-valued field (`probe.data_roots.mtt`)."""
    if key in known:
        return True
    head = key.rsplit(".", 1)[0]
    return head in known and "dict" in str(known[head])


def expand(cfg: SweepConfig, source: str) -> list[Trial]:
    """Variants x grid points x seeds -> trials (every combination is validated too)."""
    if cfg.checkpoints:
        return _checkpoint_trials(cfg, source)
    variants = cfg.variants or {"": {}}
    keys = list(cfg.grid)
    short = {k: k.rsplit(".", 1)[-1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k for k in keys}
    problems: list[str] = []
    trials: list[Trial] = []
    cells: dict[str, str] = {}  # config hash -> the label that first gave it
    for vname, changes in variants.items():
        for combo in itertools.product(*(cfg.grid[k] for k in keys)):
            data = cfg.base
            for key, value in [*changes.items(), *zip(keys, combo, strict=True)]:
                data = set_dotted(data, key, value)
            data = _with_probe_schedule(data, cfg.probe)
            grid_label = ", ".join(f"{short[k]}={_fmt(v)}" for k, v in zip(keys, combo, strict=True))
            label = ", ".join(p for p in (vname, grid_label) if p) or "base"
            try:
                exp = ExperimentConfig.model_validate(data)
            except ValidationError as exc:
                problems += [f"{label}: {p}" for p in format_errors(ExperimentConfig, exc)]
                continue
            cell = config_hash(exp)
            if cell in cells:
                problems.append(f"{label}: the same experiment as {cells[cell]} (two variants or grid points "
                                "change nothing between them)")
                continue
            cells[cell] = label
            factors = {**changes, **dict(zip(keys, combo, strict=True))}
            steps = probe_steps(cfg.probe, exp.pretrain.max_steps)
            for seed in cfg.seeds:
                trials.append(Trial(label, cell, seed, factors, exp.model_copy(update={"seed": seed}), vname,
                                    bool(vname) and vname == cfg.baseline, None, steps))
    if problems:
        raise ConfigError(source, problems)
    return trials


def _checkpoint_trials(cfg: SweepConfig, source: str) -> list[Trial]:
    data = _with_probe_schedule(cfg.base, cfg.probe)
    try:
        exp = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(ExperimentConfig, exc, "base")) from None
    trials = []
    for name, path in cfg.checkpoints.items():
        cell = hashlib.sha256(f"{name}\n{path}\n{config_hash(exp)}".encode()).hexdigest()[:10]
        trials.append(Trial(name, cell, 0, {}, exp, name, False, str(path or "")))  # "": checks.py asks for it
    return trials


def _with_probe_schedule(data: Mapping[str, Any], probe: ProbeScheduleConfig) -> dict[str, Any]:
    """The sweep-level probe tasks and data roots written into an experiment's probe section."""
    out = dict(data)
    if probe.tasks is not None:
        out = set_dotted(out, "probe.tasks", list(probe.tasks))
    for task, root in probe.data_roots.items():
        out = set_dotted(out, f"probe.data_roots.{task}", root)
    return out


def probe_steps(probe: ProbeScheduleConfig, max_steps: int) -> tuple[int, ...]:
    """Pretraining steps whose checkpoints are probed: the schedule up to `max_steps`, and `max_steps` itself."""
    steps = set(probe.at_steps)
    if probe.every_steps:
        steps |= set(range(probe.every_steps, max_steps + 1, probe.every_steps))
    return tuple(sorted(s for s in steps | {max_steps} if s <= max_steps))


def config_hash(exp: ExperimentConfig) -> str:
    """Short hash of an experiment config with the seed left out (the ablation cell)."""
    data = exp.model_dump(mode="json")
    data.pop("seed", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
