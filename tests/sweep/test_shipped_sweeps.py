"""Every shipped sweeps/*.yaml: `--check --smoke` passes, the paper files without --smoke name every missing
dataset root (and checkpoint) and pass with real-layout roots, the files' headers, and what `--smoke` keeps and
shrinks."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from musicssl.cli import main
from musicssl.config import tiny, tiny_hubert
from musicssl.probe.tasks import TASKS
from musicssl.sweep.smoke import SMOKE_STEPS
from musicssl.sweep.spec import Sweep, load_sweep
from musicssl.sweep.stages import sweep_record, work_dir, write_trial_index

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
PAPER = [p for p in SWEEPS if p.name != "demo.yaml"]
ITER1, ITER2 = REPO / "sweeps" / "musichubert_clusters.yaml", REPO / "sweeps" / "musichubert_iter2.yaml"
BASELINES = REPO / "sweeps" / "baselines.yaml"
NAMES = {"ids": lambda p: p.name}


# ---------------------------------------------------------------- fixtures: imported checkpoints, iteration 1


@pytest.fixture(scope="module")
def imported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The `checkpoint` fixture as a musicssl folder, a Hugging Face export and a fairseq .pt (as
    tests/probe/test_probe_sources.py makes them)."""
    import torch

    from musicssl.checkpoints import load_encoder_checkpoint
    from musicssl.models.convert import export_hf

    out = tmp_path_factory.mktemp("imported")
    cfg, state, _ = load_encoder_checkpoint(checkpoint)
    hf = export_hf(state, cfg.model.encoder, "music2vec", out / "hf")
    e = cfg.model.encoder
    model_cfg = {"_name": "data2vec_audio", "extractor_mode": e.extractor_mode,
                 "conv_feature_layers": str([tuple(layer) for layer in e.conv_layers]),
                 "encoder_layers": e.num_layers, "encoder_embed_dim": e.embed_dim, "encoder_ffn_embed_dim": e.ffn_dim,
                 "encoder_attention_heads": e.num_heads, "conv_pos": e.conv_pos, "conv_pos_groups": e.conv_pos_groups,
                 "pos_conv_depth": e.pos_conv_depth}
    fairseq_cfg: Any = {"model": model_cfg, "task": {"_name": "audio_pretraining", "normalize": True}}
    try:
        import omegaconf

        fairseq_cfg = omegaconf.OmegaConf.create(fairseq_cfg)
    except ImportError:  # a plain dict reads the same
        pass
    pt = out / "checkpoint_last.pt"
    torch.save({"model": dict(state), "cfg": fairseq_cfg}, pt)
    return {"musicssl": checkpoint, "hf": hf, "fairseq": pt}


def baselines_overrides(imported: dict[str, Path]) -> list[str]:
    return [f"checkpoints.hubert_base={imported['hf']}", f"checkpoints.data2vec_audio_base={imported['fairseq']}",
            f"checkpoints.music2vec_v1={imported['musicssl']}"]


def fake_iteration_one(state: Path, checkpoint: Path, *, smoke: bool) -> Path:
    """A finished-looking run of musichubert_clusters (its smoke run with `smoke`) in the state folder, laid out as
    sweep/tune.py writes it: sweep.json with the parent run, trials.json, the baseline's checkpoint + `latest`."""
    sweep = load_sweep(ITER1, smoke=smoke)
    parent = "f" * 32
    record = sweep_record(state, sweep.cfg.name)
    record.parent.mkdir(parents=True)
    record.write_text(f'{{"parent_run_id": "{parent}"}}')
    folder = work_dir(state, sweep.cfg.name, parent)
    write_trial_index(folder, sweep.trials)
    (trial,) = [t for t in sweep.trials if t.variant_name == "k2000_mfcc39" and t.seed == 0]
    ckpts = folder / "trials" / trial.key / "checkpoints"
    final = ckpts / f"step_{trial.experiment.pretrain.max_steps:09d}"
    shutil.copytree(checkpoint, final)
    (ckpts / "latest").write_text(final.name)
    return final


def setup(path: Path, state: Path, checkpoint: Path, imported: dict[str, Path], *, smoke: bool) -> list[str]:
    """What a shipped file needs besides itself: the overrides it is run with."""
    if path == ITER2:
        fake_iteration_one(state, checkpoint, smoke=smoke)
    return baselines_overrides(imported) if path == BASELINES else []


def check(path: Path, state: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["sweep", str(path), "--check", "--state-dir", str(state), *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


def real_tasks(sweep: Sweep) -> list[str]:
    return [t for t in sweep.trials[0].experiment.probe.tasks if not TASKS[t].synthetic]


# ---------------------------------------------------------------- fake dataset trees of tests/probe


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny tree in each dataset's real layout (the builders of tests/probe), as `probe.data_roots`."""
    ds = _load("_shipped_sweeps_fake_datasets", REPO / "tests" / "probe" / "test_datasets.py")
    beat = _load("_shipped_sweeps_fake_beat", REPO / "tests" / "probe" / "test_beat.py")
    vocal = _load("_shipped_sweeps_fake_vocalset", REPO / "tests" / "probe" / "test_marble_vocalset.py")
    top = tmp_path_factory.mktemp("datasets")
    builders = {"MTT": ds.make_mtt, "GS": ds.make_giantsteps, "GTZAN": ds.make_gtzan, "EMO": ds.make_emo,
                "NSynth": ds.make_nsynth, "VocalSet": vocal.make_vocalset, "GTZAN-Rhythm": beat.write_fake_gtzan}
    for folder, build in builders.items():
        (top / folder).mkdir()
        build(top / folder)
    for subset, tags in (("instrument", 40), ("moodtheme", 56), ("genre", 87), ("top50tags", 50)):  # one root
        ds.make_mtg(top / "MTG", subset, tags)
    folders = {"mtt": "MTT", "giantsteps_key": "GS", "gtzan_genre": "GTZAN", "emo": "EMO", "nsynth_instrument": "NSynth",
               "nsynth_pitch": "NSynth", "vocalset_singer": "VocalSet", "vocalset_technique": "VocalSet",
               "gtzan_beat": "GTZAN-Rhythm", "mtg_instrument": "MTG", "mtg_moodtheme": "MTG", "mtg_genre": "MTG",
               "mtg_top50": "MTG"}
    return {task: str(top / folder) for task, folder in folders.items()}


# ---------------------------------------------------------------- (a) --check --smoke passes


@pytest.mark.parametrize("path", SWEEPS, **NAMES)
def test_smoke_check_passes(path: Path, tmp_path: Path, checkpoint: Path, imported: dict[str, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    overrides = setup(path, state, checkpoint, imported, smoke=True)
    code, out, err = check(path, state, capsys, "--smoke", *overrides)
    assert (code, err) == (0, ""), err
    assert f"{path}: OK (--smoke)" in out
    assert not (state / "mlflow.db").exists() and not (state / "corpus").exists()  # --check starts nothing


def test_iteration_two_smoke_finds_the_iteration_one_smoke_checkpoint(tmp_path: Path, checkpoint: Path) -> None:
    final = fake_iteration_one(tmp_path, checkpoint, smoke=True)
    sweep = load_sweep(ITER2, smoke=True, state_dir=tmp_path)
    assert "musichubert_clusters-smoke" in str(final)
    hubert = sweep.trials[0].experiment.model.hubert
    assert hubert.label_model == str(final)
    assert hubert.label_layer == 2  # layer 6 of 12 -> 2 of the tiny encoder's 4
    assert hubert.label_source == "model" and hubert.label_rate == 50
    assert hubert.num_clusters == 100  # 2000 / 20
    with pytest.raises(Exception, match="label_model.sweep: no run of sweep 'musichubert_clusters-smoke'"):
        load_sweep(ITER2, smoke=True, state_dir=tmp_path / "elsewhere")


def test_baselines_smoke_probes_every_checkpoint_format(tmp_path: Path, imported: dict[str, Path]) -> None:
    sweep = load_sweep(BASELINES, baselines_overrides(imported), smoke=True)
    assert {t.variant: t.checkpoint for t in sweep.trials} == {
        "hubert_base": str(imported["hf"]), "data2vec_audio_base": str(imported["fairseq"]),
        "music2vec_v1": str(imported["musicssl"])}
    assert all(t.probe_steps == () for t in sweep.trials)  # nothing is pretrained


# ---------------------------------------------------------------- (b) without --smoke: every dataset root


@pytest.mark.parametrize("path", PAPER, **NAMES)
def test_paper_sweep_names_every_missing_dataset_root(path: Path, tmp_path: Path, checkpoint: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    if path == ITER2:
        fake_iteration_one(state, checkpoint, smoke=False)
    tasks = real_tasks(load_sweep(path, state_dir=state))
    assert len(tasks) >= 9
    code, _, err = check(path, state, capsys)
    assert code == 2
    for task in tasks:
        assert f"  - probe.data_roots.{task}: task {task!r} needs its dataset root" in err, task
    if path == BASELINES:
        for name in ("hubert_base", "data2vec_audio_base", "music2vec_v1"):
            assert f"  - checkpoints.{name}: give the path of this checkpoint" in err, name
    assert not (state / "mlflow.db").exists()


def test_paper_sweep_passes_with_real_layout_roots(roots: dict[str, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "sweeps" / "music2vec_mask.yaml"
    tasks = real_tasks(load_sweep(path))
    given = [f"probe.data_roots.{task}={roots[task]}" for task in tasks]
    code, out, err = check(path, tmp_path / "state", capsys, *given)
    assert (code, err) == (0, ""), err
    assert "OK, 5 trials (5 variants x 1 seeds)" in out
    # one root missing again: only that task is named
    code, _, err = check(path, tmp_path / "state", capsys, *given[1:])
    assert code == 2 and re.findall(r"(probe\.data_roots\.\w+): ", err) == [f"probe.data_roots.{tasks[0]}"], err
    # the root of another dataset: named with what its adapter expects
    code, _, err = check(path, tmp_path / "state", capsys, *given, f"probe.data_roots.emo={roots['mtt']}")
    assert code == 2 and "probe.data_roots.emo: " in err and "emoMusic layout" in err
    assert not (tmp_path / "state").exists()


def test_baselines_pass_with_roots_and_checkpoints(roots: dict[str, str], tmp_path: Path, imported: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sweep = load_sweep(BASELINES)
    given = [f"probe.data_roots.{task}={roots[task]}" for task in real_tasks(sweep)]
    code, out, err = check(BASELINES, tmp_path / "state", capsys, *given, *baselines_overrides(imported))
    assert (code, err) == (0, ""), err
    assert "OK, 3 trials" in out
    code, _, err = check(BASELINES, tmp_path / "state", capsys, *given)  # the checkpoints alone are missing
    assert code == 2
    assert re.findall(r"  - (checkpoints\.\w+): give the path", err) == [
        "checkpoints.hubert_base", "checkpoints.data2vec_audio_base", "checkpoints.music2vec_v1"]
    assert "probe.data_roots" not in err


# ---------------------------------------------------------------- (c) file headers


@pytest.mark.parametrize("path", SWEEPS, **NAMES)
def test_file_opens_with_its_run_command_and_names_no_issue(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# Run:"), "a sweep file opens with a comment giving its run command"
    assert f"sweeps/{path.name}" in text.splitlines()[0] or path.name == "demo.yaml"
    assert not re.search(r"(?i)\bissues?\b\W{0,3}#?\d+", text), "internal issue numbers do not belong in a sweep file"


# ---------------------------------------------------------------- (d) what --smoke keeps and shrinks


@pytest.mark.parametrize("path", SWEEPS, **NAMES)
def test_smoke_keeps_the_design_and_shrinks_the_rest(path: Path, tmp_path: Path, checkpoint: Path,
                                                     imported: dict[str, Path]) -> None:
    state = tmp_path / "state"
    overrides = setup(path, state, checkpoint, imported, smoke=False)
    if path == ITER2:
        fake_iteration_one(state, checkpoint, smoke=True)
    full = load_sweep(path, overrides, state_dir=state)
    smoke = load_sweep(path, overrides, smoke=True, state_dir=state)
    # kept: variants, grid, seeds, baseline
    assert len(smoke.trials) == len(full.trials)
    assert [t.variant for t in smoke.trials] == [t.variant for t in full.trials]
    assert [t.seed for t in smoke.trials] == [t.seed for t in full.trials]
    assert [t.baseline for t in smoke.trials] == [t.baseline for t in full.trials]
    assert list(smoke.cfg.variants) == list(full.cfg.variants) and smoke.cfg.baseline == full.cfg.baseline
    assert list(smoke.cfg.grid) == list(full.cfg.grid) and smoke.cfg.seeds == full.cfg.seeds
    assert smoke.factors == full.factors
    # shrunk
    assert smoke.smoke and smoke.cfg.name == f"{full.cfg.name}-smoke"
    res = smoke.cfg.resources
    assert (res.cpus_per_trial, res.gpus_per_trial, res.workers_per_trial) == (1, 0, 1)
    assert (smoke.cfg.probe.cpus, smoke.cfg.probe.gpus) == (1, 0)
    for t in smoke.trials:
        exp = t.experiment
        preset = tiny_hubert() if exp.model.paradigm == "musichubert" else tiny()
        assert exp.model.encoder == preset.encoder
        assert exp.pretrain.device == "cpu"
        assert exp.data.manifest is None  # the synthetic corpus
        assert all(TASKS[task].synthetic for task in exp.probe.tasks), exp.probe.tasks
        if t.checkpoint is None:
            assert exp.pretrain.max_steps == (SMOKE_STEPS if "pretrain.max_steps" not in t.factors else
                                              exp.pretrain.max_steps)
            assert len(t.probe_steps) <= 3 and t.probe_steps[-1] == exp.pretrain.max_steps
    baseline = [t for t in smoke.trials if t.baseline or not t.variant_name]
    assert all(t.experiment.pretrain.max_steps == SMOKE_STEPS for t in baseline if t.checkpoint is None)


def smoke_of(name: str) -> dict[str, Any]:
    sweep = load_sweep(REPO / "sweeps" / f"{name}.yaml", smoke=True)
    return {t.variant: t.experiment for t in sweep.trials}


def test_smoke_scales_what_a_variant_varies() -> None:
    steps = smoke_of("music2vec_steps")
    assert steps["vanilla"].pretrain.max_steps == 60 and steps["step800k"].pretrain.max_steps == 120
    target = smoke_of("music2vec_target")
    assert target["vanilla"].model.music2vec.average_top_k_layers == 3  # 8 of 12 -> 3 of 4
    assert target["target12"].model.music2vec.average_top_k_layers == 4  # all 12 -> all 4
    crop = smoke_of("music2vec_crop")
    assert crop["vanilla"].data.max_sample_size == 48000 and crop["crop5s"].data.max_sample_size == 8000
    assert crop["vanilla"].data.max_tokens == crop["crop5s"].data.max_tokens  # same samples per batch
    clusters = smoke_of("musichubert_clusters")
    assert clusters["k2000_mfcc39"].model.hubert.num_clusters == 100
    assert clusters["k500_mfcc39"].model.hubert.num_clusters == 25
    assert clusters["k500_mfcc60"].model.hubert.num_clusters == 25
    assert clusters["k500_mfcc60"].model.hubert.mfcc_ceps == 20
    mask = smoke_of("music2vec_mask")
    assert mask["span5"].model.mask_length == 5 and mask["prob80"].model.mask_prob == 0.8  # kept as they are


def test_smoke_probes_stand_ins_and_a_shorter_schedule() -> None:
    full = load_sweep(REPO / "sweeps" / "music2vec_mask.yaml")
    smoke = load_sweep(REPO / "sweeps" / "music2vec_mask.yaml", smoke=True)
    assert full.trials[0].probe_steps == (100000, 200000, 300000, 400000)
    assert smoke.trials[0].probe_steps == (30, 60)  # one probe point besides the final one
    assert smoke.trials[0].experiment.probe.tasks == (
        "synth_tags", "synth_key", "synth_instrument", "synth_tempo", "synth_pitch", "synth_beat")
    steps = {t.variant: t.probe_steps for t in load_sweep(REPO / "sweeps" / "music2vec_steps.yaml", smoke=True).trials}
    assert steps == {"vanilla": (60,), "step800k": (60, 120)}  # probed at "400k" and "800k"


def test_smoke_keeps_a_real_task_whose_root_is_given(roots: dict[str, str]) -> None:
    sweep = load_sweep(REPO / "sweeps" / "music2vec_mask.yaml", [f"probe.data_roots.gtzan_genre={roots['gtzan_genre']}"],
                       smoke=True)
    # mtt -> synth_tags, gtzan_genre kept (its stand-in synth_instrument still comes from nsynth_instrument)
    assert sweep.trials[0].experiment.probe.tasks == (
        "synth_tags", "synth_key", "gtzan_genre", "synth_tempo", "synth_instrument", "synth_pitch", "synth_beat")
    assert sweep.trials[0].experiment.probe.data_roots == {"gtzan_genre": roots["gtzan_genre"]}


def test_smoke_checks_a_real_task_whose_root_is_given(roots: dict[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "sweeps" / "music2vec_mask.yaml"
    code, out, err = check(path, tmp_path / "state", capsys, "--smoke", f"probe.data_roots.emo={roots['emo']}")
    assert (code, err) == (0, ""), err
    assert "probe tasks: synth_tags, synth_key, synth_instrument, emo," in out
    (tmp_path / "empty").mkdir()
    code, _, err = check(path, tmp_path / "state", capsys, "--smoke", f"probe.data_roots.emo={tmp_path / 'empty'}")
    assert code == 2 and "probe.data_roots.emo: " in err and "emoMusic layout" in err
