"""One syntax for probe settings (`probe.<field>=`) in sweeps, `probe` and `probe tune`; the checkpoint's own probe
section as the starting point; `--tasks` that does not eat overrides."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import optuna
import pytest

from musicssl.cli import build_parser, split_task_arguments
from musicssl.config import ProbeConfig
from musicssl.config_io import ConfigError, probe_overrides
from musicssl.probe.run import checkpoint_probe_settings, probe_settings
from musicssl.probe.tune_cli import add_tune_parser, tune_cli
from musicssl.sweep.spec import load_sweep, sweep_from_data

REPO = Path(__file__).resolve().parents[2]


def test_probe_overrides_take_the_experiments_own_paths() -> None:
    got = probe_overrides(["probe.data_roots.gtzan_genre=/data/GTZAN", "probe.lr=0.005", "dropout=0.1"], "x")
    assert got == {"data_roots": {"gtzan_genre": "/data/GTZAN"}, "lr": 0.005, "dropout": 0.1}
    with pytest.raises(ConfigError) as err:
        probe_overrides(["model.mask_prob=0.5"], "musicssl probe")
    assert err.value.problems[0].startswith("model: not a probe setting; this command takes probe.<field>=value")


def test_unknown_probe_keys_are_named_with_their_probe_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        probe_settings(tmp_path / "missing", ["probe.lrr=1e-3", "probe.window_seconds=-1"], "musicssl probe")
    assert sorted(err.value.problems) == [
        "probe.lrr: unknown key (did you mean 'lr'?)",
        "probe.window_seconds: input should be greater than 0, got -1",
    ]


def test_tasks_option_does_not_swallow_overrides_or_the_checkpoint() -> None:
    args = build_parser().parse_args(["probe", "ckpt", "--tasks", "synth_pitch", "synth_key", "probe.lr=5e-3",
                                      "probe.data_roots.mtt=/d"])
    assert args.checkpoint == "ckpt"
    assert split_task_arguments(args.tasks) == (["synth_pitch", "synth_key"], ["probe.lr=5e-3", "probe.data_roots.mtt=/d"])
    late = build_parser().parse_args(["probe", "--tasks", "synth_pitch", "ckpt"])
    assert late.checkpoint is None and late.tasks == ["synth_pitch", "ckpt"]  # _cmd_probe takes the last non-task


def test_probe_settings_start_from_the_checkpoints_probe_section(checkpoint: Path, tmp_path: Path) -> None:
    own = tmp_path / "ckpt"
    shutil.copytree(checkpoint, own)
    config = json.loads((own / "config.json").read_text())
    config["probe"] |= {"lr": 0.004, "window_seconds": 1.5, "dropout": 0.1, "tasks": ["synth_key"]}
    (own / "config.json").write_text(json.dumps(config))
    assert checkpoint_probe_settings(own)["lr"] == 0.004
    assert checkpoint_probe_settings(tmp_path / "no-such-folder") == {}
    cfg = probe_settings(own, ["probe.dropout=0.3"], "x")
    assert (cfg.lr, cfg.window_seconds, cfg.dropout, cfg.tasks) == (0.004, 1.5, 0.3, ("synth_key",))
    assert probe_settings(own, [], "x", ["synth_pitch"]).tasks == ("synth_pitch",)


def test_probe_tune_starts_from_the_checkpoints_probe_section(checkpoint: Path, tiny_corpus: Path,
                                                              tmp_path: Path) -> None:
    """Trial 0 of a new study = the checkpoint's probe settings, with the command line's overrides on top."""
    own = tmp_path / "ckpt"
    shutil.copytree(checkpoint, own)
    config = json.loads((own / "config.json").read_text())
    config["probe"] |= {"lr": 0.004, "window_seconds": 1.5, "hidden_dim": 256, "standardize": False,
                        "max_epochs": 3}
    (own / "config.json").write_text(json.dumps(config))
    parser = argparse.ArgumentParser()
    add_tune_parser(parser.add_subparsers(dest="command"))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = parser.parse_args(["tune", str(own), "probe.dropout=0.3", "--task", "synth_pitch", "--trials", "1",
                              "--storage", storage, "--state-dir", str(tmp_path / "state"), "--corpus", str(tiny_corpus)])
    assert tune_cli(args) == 0
    (name,) = optuna.get_all_study_names(storage)
    (trial,) = optuna.load_study(study_name=name, storage=storage).trials
    assert trial.params == {"lr": 0.004, "dropout": 0.3, "hidden_dim": 256, "weight_decay": 1e-6,
                            "batch_size": 64, "layers": "all", "standardize": False}


def test_sweeps_take_probe_settings_under_probe_as_well(tmp_path: Path) -> None:
    sweep = load_sweep(REPO / "sweeps/demo.yaml", ["probe.lr=0.002", "probe.standardize=false",
                                                   "probe.data_roots.gtzan_genre=/d"])
    for trial in sweep.trials:  # the command line wins over the file's base.probe
        probe = trial.experiment.probe
        assert (probe.lr, probe.standardize, probe.data_roots) == (0.002, False, {"gtzan_genre": "/d"})
    data = {"name": "s", "base": {"probe": {"lr": 0.005}}, "probe": {"dropout": 0.3, "every_steps": 10}}
    (trial,) = sweep_from_data(data, "s.yaml").trials
    assert (trial.experiment.probe.dropout, trial.experiment.probe.lr) == (0.3, 0.005)
    with pytest.raises(ConfigError) as err:  # one file, two values for one setting
        sweep_from_data({"name": "s", "base": {"probe": {"lr": 0.005}}, "probe": {"lr": 0.001}}, "s.yaml")
    assert err.value.problems == ["probe.lr: set to 0.001 here and to 0.005 in base.probe.lr; keep one"]
    assert ProbeConfig(data_roots={"mtt": "~/MTT"}).data_roots["mtt"] == str(Path.home() / "MTT")
