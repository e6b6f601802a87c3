from __future__ import annotations

from pathlib import Path

import pytest

from musicssl.cli import main
from musicssl.config_io import ConfigError
from musicssl.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
name: t
base:
  model: {preset: tiny}
grid:
  model.mask_prob: [0.5, 0.8]
seeds: [0, 1]
"""


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_is_valid(path: Path, tmp_path: Path) -> None:
    if path.name == "musichubert_iter2.yaml":  # finds its label model in an iteration-1 run of the state folder
        fake_iteration_one_run(tmp_path, "musichubert_clusters", "k2000_mfcc39")
    sweep = load_sweep(path, state_dir=tmp_path)
    assert sweep.trials, f"{path.name} expands to no trial"
    assert path.read_text().startswith("# Run:"), "a sweep file opens with a comment giving its run command"
    keys = [t.key for t in sweep.trials]
    assert len(keys) == len(set(keys))


def fake_iteration_one_run(state: Path, sweep: str, variant: str) -> None:
    """The files `resolve_label_model` looks at (full layout: tests/sweep/test_shipped_sweeps.py)."""
    import json

    folder = state / "sweeps" / sweep / ("a" * 12)
    (folder / "trials" / "k" / "checkpoints" / "step_000000001").mkdir(parents=True)
    (folder.parent / "sweep.json").write_text(json.dumps({"parent_run_id": "a" * 32}))
    (folder / "trials.json").write_text(json.dumps([{"key": "k", "variant": variant, "variant_name": variant,
                                                     "seed": 0, "baseline": True}]))
    (folder / "trials" / "k" / "checkpoints" / "step_000000001" / "state.json").write_text("{}")
    (folder / "trials" / "k" / "checkpoints" / "latest").write_text("step_000000001")


def test_grid_times_seeds(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(GOOD)
    sweep = load_sweep(f)
    assert [(t.variant, t.seed) for t in sweep.trials] == [
        ("mask_prob=0.5", 0), ("mask_prob=0.5", 1), ("mask_prob=0.8", 0), ("mask_prob=0.8", 1)]
    assert [t.experiment.model.mask_prob for t in sweep.trials] == [0.5, 0.5, 0.8, 0.8]
    assert sweep.trials[0].cell == sweep.trials[1].cell != sweep.trials[2].cell  # cell ignores the seed
    assert sweep.trials[1].experiment.seed == 1


def _problems(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_sweep(f)
    assert err.value.source == str(f)
    return err.value.problems


def test_unknown_keys_name_the_path_and_suggest(tmp_path: Path) -> None:
    problems = _problems(tmp_path, GOOD.replace("seeds:", "seedz:") + "base2: 1\n")
    assert "seedz: unknown key (did you mean 'seeds'?)" in problems
    assert "base2: unknown key (did you mean 'base'?)" in problems
    problems = _problems(tmp_path, GOOD.replace("model: {preset: tiny}", "model: {preset: tiny, mask_prb: 0.1}"))
    assert problems == ["base.model.mask_prb: unknown key (did you mean 'mask_prob'?)"]
    problems = _problems(tmp_path, GOOD.replace("model.mask_prob:", "model.mask_prb:"))
    assert problems == ["grid.model.mask_prb: unknown key (did you mean 'model.mask_prob'?)"]


def test_wrong_types_and_ranges_are_all_reported(tmp_path: Path) -> None:
    text = GOOD.replace("[0.5, 0.8]", "[0.5, 1.3, -0.1]\n  model.mask_length: [5, ten]")
    problems = _problems(tmp_path, text)
    assert "grid.model.mask_prob[1]: input should be less than or equal to 1, got 1.3" in problems
    assert "grid.model.mask_prob[2]: input should be greater than or equal to 0, got -0.1" in problems
    assert any(p.startswith("grid.model.mask_length[1]: input should be a valid integer") and "'ten'" in p
               for p in problems)
    assert len(problems) == 3
    problems = _problems(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: zero\nresources: {cpus_per_trial: 0}"))
    assert any(p.startswith("seeds: input should be a valid list") for p in problems)
    assert "resources.cpus_per_trial: input should be greater than 0, got 0" in problems


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "m.yaml"
    bad.write_text("name: t\ngrid:\n  model.mask_prob: [0.5, 0.8\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: malformed YAML: line \d+, column \d+"):
        load_sweep(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_sweep(bad)


def test_cli_fails_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("[0.5, 0.8]", "[0.5, 1.3]"))
    state = tmp_path / "state"
    code = main(["sweep", str(f), "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert "grid.model.mask_prob[1]: input should be less than or equal to 1, got 1.3" in err
    assert not state.exists(), "nothing (corpus, MLflow DB, Ray) may start for a bad sweep file"
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--state-dir", str(state)]) == 2
    assert "missing.yaml: file not found" in capsys.readouterr().err


def test_command_line_overrides_are_validated_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(GOOD)
    assert load_sweep(f, ["base.pretrain.max_steps=7"]).trials[0].experiment.pretrain.max_steps == 7
    assert main(["sweep", str(f), "--check", "base.pretrain.max_stepz=7"]) == 2
    assert "base.pretrain.max_stepz: unknown key (did you mean 'max_steps'?)" in capsys.readouterr().err
