"""Sweep expansion: variants x grid x seeds, the baseline rules, the probe schedule, command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicssl.cli import main
from musicssl.config_io import ConfigError
from musicssl.sweep.schema import ProbeScheduleConfig
from musicssl.sweep.spec import Sweep, apply_overrides, load_sweep, probe_steps

REPO = Path(__file__).resolve().parents[2]

SWEEP = """\
name: t
baseline: vanilla
variants:
  vanilla: {}
  span5: {model.mask_length: 5}
  prob80: {model.mask_prob: 0.8}
base:
  model: {preset: tiny}
  data: {max_sample_size: 48000, max_tokens: 384000}
  pretrain: {max_steps: 150, device: cpu}
probe:
  tasks: [synth_pitch, synth_key]
  every_steps: 50
"""


def load(tmp_path: Path, text: str = SWEEP, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    return load_sweep(f, overrides)


def problems(tmp_path: Path, text: str = SWEEP, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text, overrides)
    return err.value.problems


# ---------------------------------------------------------------- expansion


def test_variants_times_grid_times_seeds(tmp_path: Path) -> None:
    sweep = load(tmp_path, SWEEP + "grid:\n  model.mask_min_masks: [1, 2]\nseeds: [3, 7]\n")
    assert len(sweep.trials) == 3 * 2 * 2
    assert [(t.variant, t.seed) for t in sweep.trials[:4]] == [
        ("vanilla, mask_min_masks=1", 3), ("vanilla, mask_min_masks=1", 7),
        ("vanilla, mask_min_masks=2", 3), ("vanilla, mask_min_masks=2", 7)]
    assert [t.variant for t in sweep.trials[::2]] == [
        "vanilla, mask_min_masks=1", "vanilla, mask_min_masks=2", "span5, mask_min_masks=1",
        "span5, mask_min_masks=2", "prob80, mask_min_masks=1", "prob80, mask_min_masks=2"]
    assert [t.variant_name for t in sweep.trials] == ["vanilla"] * 4 + ["span5"] * 4 + ["prob80"] * 4
    assert [t.baseline for t in sweep.trials] == [True] * 4 + [False] * 8
    assert [t.seed for t in sweep.trials] == [3, 7] * 6
    assert [t.experiment.seed for t in sweep.trials] == [3, 7] * 6

    exp = {t.variant: t.experiment for t in sweep.trials}
    assert exp["vanilla, mask_min_masks=1"].model.mask_length == 10  # the base (data2vec) value
    assert exp["vanilla, mask_min_masks=1"].model.mask_prob == 0.65
    assert exp["span5, mask_min_masks=2"].model.mask_length == 5
    assert exp["span5, mask_min_masks=2"].model.mask_min_masks == 2
    assert exp["span5, mask_min_masks=2"].model.mask_prob == 0.65
    assert exp["prob80, mask_min_masks=1"].model.mask_prob == 0.8
    assert exp["prob80, mask_min_masks=1"].model.mask_length == 10
    for e in exp.values():  # base settings reach every trial
        assert e.model.encoder.num_layers == 4 and e.pretrain.max_steps == 150 and e.data.max_sample_size == 48000

    # a cell is a variant x grid point: the seeds of one cell share it, no two cells do
    cells = [t.cell for t in sweep.trials]
    assert cells[0::2] == cells[1::2]
    assert len(set(cells)) == 6
    assert len({t.key for t in sweep.trials}) == 12
    assert sweep.trials[2].factors == {"model.mask_min_masks": 2}
    assert sweep.trials[4].factors == {"model.mask_length": 5, "model.mask_min_masks": 1}
    assert sweep.factors == ["model.mask_length", "model.mask_prob", "model.mask_min_masks"]


def test_no_variants_grid_only_and_plain(tmp_path: Path) -> None:
    text = SWEEP.split("baseline:")[0] + SWEEP.split("  prob80: {model.mask_prob: 0.8}\n")[1]
    plain = load(tmp_path, text)
    assert [(t.variant, t.variant_name, t.baseline, t.factors) for t in plain.trials] == [("base", "", False, {})]
    assert plain.factors == []
    grid = load(tmp_path, text + "grid:\n  model.mask_prob: [0.5, 0.8]\n")
    assert [t.variant for t in grid.trials] == ["mask_prob=0.5", "mask_prob=0.8"]
    assert [t.variant_name for t in grid.trials] == ["", ""]
    assert not any(t.baseline for t in grid.trials)
    assert grid.factors == ["model.mask_prob"]


def test_grid_labels_use_full_keys_when_last_parts_collide(tmp_path: Path) -> None:
    sweep = load(tmp_path, SWEEP + "grid:\n  model.encoder.dropout: [0.0]\n  probe.dropout: [0.1, 0.3]\n")
    assert [t.variant for t in sweep.trials[:2]] == [
        "vanilla, model.encoder.dropout=0.0, probe.dropout=0.1", "vanilla, model.encoder.dropout=0.0, probe.dropout=0.3"]
    assert sweep.trials[1].experiment.probe.dropout == 0.3
    assert sweep.trials[1].experiment.model.encoder.dropout == 0.0


def test_nested_and_dotted_variant_changes_are_the_same(tmp_path: Path) -> None:
    dotted = load(tmp_path, SWEEP)
    nested = load(tmp_path, SWEEP.replace("{model.mask_length: 5}", "{model: {mask_length: 5}}")
                  .replace("{model.mask_prob: 0.8}", "\n    model:\n      mask_prob: 0.8"))
    assert [t.key for t in nested.trials] == [t.key for t in dotted.trials]
    assert [t.factors for t in nested.trials] == [t.factors for t in dotted.trials] == [
        {}, {"model.mask_length": 5}, {"model.mask_prob": 0.8}]
    assert nested.cfg.variants == dotted.cfg.variants
    assert nested.factors == dotted.factors == ["model.mask_length", "model.mask_prob"]
    assert [t.experiment for t in nested.trials] == [t.experiment for t in dotted.trials]


def test_a_baseline_written_with_nothing_after_it_changes_nothing(tmp_path: Path) -> None:
    sweep = load(tmp_path, SWEEP.replace("vanilla: {}", "vanilla:"))
    assert sweep.trials[0].baseline and sweep.trials[0].factors == {}


# ---------------------------------------------------------------- baseline rules


def test_variants_need_a_baseline(tmp_path: Path) -> None:
    assert problems(tmp_path, SWEEP.replace("baseline: vanilla\n", "")) == [
        "baseline: name the variant every other one is compared with (e.g. baseline: vanilla)"]
    no_empty = SWEEP.replace("baseline: vanilla\n", "").replace("  vanilla: {}\n", "")
    (p,) = problems(tmp_path, no_empty)
    assert p.startswith("baseline: name the variant") and "a variant with no changes" in p


def test_baseline_must_be_a_variant(tmp_path: Path) -> None:
    assert problems(tmp_path, SWEEP.replace("baseline: vanilla", "baseline: vanila")) == [
        "baseline: 'vanila' is not a variant (did you mean 'vanilla'?)"]
    (p,) = problems(tmp_path, SWEEP.replace("baseline: vanilla", "baseline: zzz"))
    assert p == "baseline: 'zzz' is not a variant; variants: vanilla, span5, prob80"


def test_the_baseline_changes_nothing(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, SWEEP.replace("vanilla: {}", "vanilla: {model.mask_min_masks: 2}"))
    assert p.startswith("variants.vanilla: the baseline changes nothing, got {'model.mask_min_masks': 2}")


def test_a_baseline_without_variants(tmp_path: Path) -> None:
    text = SWEEP.replace("variants:\n  vanilla: {}\n  span5: {model.mask_length: 5}\n  prob80: {model.mask_prob: 0.8}\n",
                         "")
    assert problems(tmp_path, text) == ["baseline: 'vanilla' names a variant, but the sweep has no variants"]


def test_two_variants_with_the_same_config_are_rejected(tmp_path: Path) -> None:
    # span10 sets the base value explicitly: the same experiment as the baseline
    (p,) = problems(tmp_path, SWEEP.replace("span5: {model.mask_length: 5}", "span10: {model.mask_length: 10}"))
    assert p.startswith("span10: the same experiment as vanilla")
    # the same change written nested and dotted under two names
    (p,) = problems(tmp_path, SWEEP.replace("  prob80: {model.mask_prob: 0.8}\n",
                                            "  prob80: {model.mask_prob: 0.8}\n  p80: {model: {mask_prob: 0.8}}\n"))
    assert p.startswith("p80: the same experiment as prob80")


# ---------------------------------------------------------------- probe schedule


@pytest.mark.parametrize(("every", "at", "max_steps", "expected"), [
    (None, (), 100, (100,)),  # only the final checkpoint
    (50, (), 150, (50, 100, 150)),
    (40, (), 100, (40, 80, 100)),  # the final one always, even off the schedule
    (None, (30, 70), 100, (30, 70, 100)),
    (50, (30, 50, 500), 100, (30, 50, 100)),  # union, deduplicated; steps past max_steps dropped
    (500, (), 100, (100,)),
    (None, (400000, 800000), 400000, (400000,)),
    (None, (400000, 800000), 800000, (400000, 800000)),
])
def test_probe_steps(every: int | None, at: tuple[int, ...], max_steps: int, expected: tuple[int, ...]) -> None:
    assert probe_steps(ProbeScheduleConfig(every_steps=every, at_steps=at), max_steps) == expected


def test_probe_steps_per_trial_of_the_steps_sweep() -> None:
    sweep = load_sweep(REPO / "sweeps" / "music2vec_steps.yaml")
    steps = {t.variant: (t.experiment.pretrain.max_steps, t.probe_steps) for t in sweep.trials}
    assert steps == {"vanilla": (400000, (400000,)), "step800k": (800000, (400000, 800000))}


def test_sweep_level_probe_tasks_and_roots_reach_every_trial(tmp_path: Path) -> None:
    text = SWEEP.replace("  pretrain: {max_steps: 150, device: cpu}\n",
                         "  pretrain: {max_steps: 150, device: cpu}\n"
                         "  probe: {tasks: [synth_tempo], data_roots: {mtt: /base/MTT, emo: /base/EMO}, lr: 0.01}\n")
    text = text.replace("  every_steps: 50\n", "  every_steps: 50\n  data_roots: {mtt: /sweep/MTT, gtzan_genre: /g}\n")
    sweep = load(tmp_path, text)
    for t in sweep.trials:
        probe = t.experiment.probe
        assert probe.tasks == ("synth_pitch", "synth_key")  # sweep-level tasks replace base.probe.tasks
        assert probe.data_roots == {"mtt": "/sweep/MTT", "emo": "/base/EMO", "gtzan_genre": "/g"}  # merged over base
        assert probe.lr == 0.01
    base_tasks = load(tmp_path, text.replace("  tasks: [synth_pitch, synth_key]\n", ""))
    assert all(t.experiment.probe.tasks == ("synth_tempo",) for t in base_tasks.trials)


# ---------------------------------------------------------------- command-line overrides


def test_grid_overrides(tmp_path: Path) -> None:
    text = SWEEP + "grid:\n  model.mask_min_masks: [1, 2]\n"
    assert len(load(tmp_path, text).trials) == 6
    one = load(tmp_path, text, ["grid.model.mask_min_masks=[2]"])
    assert len(one.trials) == 3 and {t.experiment.model.mask_min_masks for t in one.trials} == {2}
    new_axis = load(tmp_path, text, ["variants.prob80=null", "grid.model.mask_prob=[0.5]"])
    assert [t.variant for t in new_axis.trials] == [
        "vanilla, mask_min_masks=1, mask_prob=0.5", "vanilla, mask_min_masks=2, mask_prob=0.5",
        "span5, mask_min_masks=1, mask_prob=0.5", "span5, mask_min_masks=2, mask_prob=0.5"]
    assert {t.experiment.model.mask_prob for t in new_axis.trials} == {0.5}
    assert new_axis.factors == ["model.mask_length", "model.mask_min_masks", "model.mask_prob"]
    dropped = load(tmp_path, text, ["grid.model.mask_min_masks=null"])
    assert [t.variant for t in dropped.trials] == ["vanilla", "span5", "prob80"]
    assert dropped.cfg.grid == {}
    # grid over a key a variant changes: prob80 x mask_prob=0.5 is the same experiment as vanilla x 0.5
    (p,) = problems(tmp_path, SWEEP, ["grid.model.mask_prob=[0.5]"])
    assert p.startswith("prob80, mask_prob=0.5: the same experiment as vanilla, mask_prob=0.5")


def test_variant_overrides(tmp_path: Path) -> None:
    changed = load(tmp_path, SWEEP, ["variants.span5.model.mask_length=7"])
    exp = {t.variant: t.experiment for t in changed.trials}
    assert exp["span5"].model.mask_length == 7 and changed.cfg.variants["span5"] == {"model.mask_length": 7}
    added = load(tmp_path, SWEEP, ["variants.new.model.mask_prob=0.7"])
    assert [t.variant for t in added.trials] == ["vanilla", "span5", "prob80", "new"]
    assert added.trials[-1].experiment.model.mask_prob == 0.7 and not added.trials[-1].baseline
    # a second change of a variant keeps its first one
    two = load(tmp_path, SWEEP, ["variants.span5.model.mask_prob=0.5"])
    assert two.cfg.variants["span5"] == {"model.mask_length": 5, "model.mask_prob": 0.5}
    dropped = load(tmp_path, SWEEP, ["variants.span5=null"])
    assert [t.variant for t in dropped.trials] == ["vanilla", "prob80"]
    # a variant with no change is the baseline again: rejected, naming both
    (p,) = problems(tmp_path, SWEEP, ["variants.new={}"])
    assert p.startswith("new: the same experiment as vanilla")
    (p,) = problems(tmp_path, SWEEP, ["variants.vanilla=null"])
    assert p == "baseline: 'vanilla' is not a variant; variants: span5, prob80"
    (p,) = problems(tmp_path, SWEEP, ["variants.span5.model.mask_lenght=7"])
    assert p.startswith("variants.span5.model.mask_lenght: unknown key (did you mean 'model.mask_length'?)")


def test_plain_overrides(tmp_path: Path) -> None:
    seeds = load(tmp_path, SWEEP, ["seeds=[0,1,2]"])
    assert len(seeds.trials) == 9 and [t.seed for t in seeds.trials[:3]] == [0, 1, 2]
    every = load(tmp_path, SWEEP, ["probe.every_steps=100"])
    assert {t.probe_steps for t in every.trials} == {(100, 150)}
    short = load(tmp_path, SWEEP, ["base.pretrain.max_steps=7"])
    assert {t.experiment.pretrain.max_steps for t in short.trials} == {7}
    assert {t.probe_steps for t in short.trials} == {(7,)}
    assert short.trials[0].experiment.pretrain.device == "cpu"  # the rest of base.pretrain is kept
    tasks = load(tmp_path, SWEEP, ["probe.tasks=[synth_tempo]", "probe.data_roots.mtt=/data/MTT"])
    assert tasks.trials[0].experiment.probe.tasks == ("synth_tempo",)
    assert tasks.trials[0].experiment.probe.data_roots == {"mtt": "/data/MTT"}
    assert problems(tmp_path, SWEEP, ["probe.every_steps=0"]) == [
        "probe.every_steps: input should be greater than or equal to 1, got 0"]


def test_apply_overrides_keeps_the_file_data_untouched() -> None:
    data = {"variants": {"a": {"model": {"mask_prob": 0.5}}}, "grid": {"x": [1]}, "seeds": [0]}
    out = apply_overrides(data, ["variants.a.model.mask_length=3", "grid.x=null", "seeds=[1]"])
    assert out == {"variants": {"a": {"model.mask_prob": 0.5, "model.mask_length": 3}}, "grid": {}, "seeds": [1]}
    assert data == {"variants": {"a": {"model": {"mask_prob": 0.5}}}, "grid": {"x": [1]}, "seeds": [0]}


def test_overrides_through_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(SWEEP)
    state = tmp_path / "state"
    args = ["sweep", str(f), "--check", "--state-dir", str(state)]
    assert main([*args, "seeds=[0,1,2]", "variants.span5=null", "variants.new.model.mask_prob=0.7",
                 "grid.model.mask_min_masks=[1,2]", "base.pretrain.max_steps=100"]) == 0
    out = capsys.readouterr().out
    assert "OK, 18 trials (6 variants x 3 seeds)" in out
    assert "new, mask_min_masks=2  seed=2  100 steps, probed at [50, 100]" in out
    assert "span5" not in out
    assert out.count("(baseline)") == 6  # vanilla x 2 grid points x 3 seeds
    assert main([*args, "variants.new={}"]) == 2
    assert "new: the same experiment as vanilla" in capsys.readouterr().err
    assert not state.exists()


def test_sweep_level_probe_tasks_cannot_be_silently_overridden_or_empty(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("name: t\nbase: {model: {preset: tiny}}\nbaseline: a\nvariants:\n  a: {}\n"
                 "  b: {probe.tasks: [synth_key]}\nprobe: {tasks: [synth_pitch]}\n")
    with pytest.raises(ConfigError) as err:
        load_sweep(f)
    assert err.value.problems == ["variants.b.probe.tasks: probe.tasks is set for the whole sweep (probe.tasks); "
                                  "vary it here only without it"]
    with pytest.raises(ConfigError) as err:
        load_sweep(f, ["variants.b=null", "probe.tasks=[]"])
    assert err.value.problems == ["probe.tasks: needs at least one probe task"]
