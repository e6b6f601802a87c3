"""Malformed sweep files: `musicssl sweep FILE --check` exits 2 naming the dotted path and the problem, prints no
traceback and starts nothing (no state folder). Plus `check_cluster` on `ray.nodes()`-shaped node lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from musicssl.cli import main
from musicssl.sweep.checks import check_cluster
from musicssl.sweep.spec import Sweep, load_sweep
from musicssl.sweep.stages import sweep_record, work_dir

GOOD = """\
name: t
baseline: vanilla
variants:
  vanilla: {}
  span5: {model.mask_length: 5}
base:
  model: {preset: tiny}
  data: {max_sample_size: 48000, max_tokens: 384000}
  pretrain: {max_steps: 100, device: cpu}
probe:
  tasks: [synth_pitch, synth_key]
  every_steps: 50
"""
BASE_PROBE = "  pretrain: {max_steps: 100, device: cpu}\n"
HUBERT = "model: {preset: tiny_hubert}"


def edit(*pairs: str, add: str = "") -> str:
    """GOOD with `old -> new` replacements (each must occur) and `add` appended."""
    text = GOOD
    for old, new in zip(pairs[::2], pairs[1::2], strict=True):
        assert old in text, old
        text = text.replace(old, new)
    return text + add


def with_data(line: str, model: str = "model: {preset: tiny}") -> str:
    """GOOD with `line` added to base.data (and base.model replaced)."""
    return edit("max_tokens: 384000}", f"max_tokens: 384000, {line}}}", "model: {preset: tiny}", model)


def with_probe(line: str) -> str:
    """GOOD with `line` added to the sweep-level probe section."""
    return edit("  every_steps: 50\n", f"  every_steps: 50\n  {line}\n")


def with_tasks(tasks: str, line: str = "") -> str:
    return edit("[synth_pitch, synth_key]", tasks) + (f"  {line}\n" if line else "")


def write_fixtures(tmp: Path) -> None:
    """Files the cases point at ({tmp} in a case's text)."""
    (tmp / "empty").mkdir()
    (tmp / "notckpt").mkdir()
    (tmp / "notckpt" / "readme.txt").write_text("not a model\n")
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text(json.dumps({"model_type": "hubert", "num_hidden_layers": 12}))
    (tmp / "badconfig").mkdir()
    (tmp / "badconfig" / "encoder.safetensors").write_bytes(b"")
    (tmp / "badconfig" / "config.json").write_text("{not json")
    (tmp / "garbage.pt").write_bytes(b"\x00\x01 definitely not a torch file")
    (tmp / "afile").write_text("a file, not a folder\n")
    (tmp / "garbage.tsv").write_bytes(b"\xff\xfe\x00\x81garbage\x00\n\x02")
    (tmp / "words.tsv").write_text("/audio\nthis is not a manifest\n")
    (tmp / "empty.tsv").write_text("")
    (tmp / "two.tsv").write_text("/audio\na.wav\t48000\nb.wav\t48000\n")
    (tmp / "nodict").mkdir()
    (tmp / "nodict" / "train.km").write_text("1 2 3\n4 5 6\n")
    (tmp / "km").mkdir()
    (tmp / "km" / "train.km").write_text("1 2 3\n")  # one line for a two-row manifest
    (tmp / "km" / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(8)))
    (tmp / "gtzan_no_train" / "genres" / "blues").mkdir(parents=True)


Case = tuple[str, str, str]  # (text, dotted path, key phrase)
CASES: dict[str, Case] = {
    # ---- name
    "name-pattern": (edit("name: t", "name: 'my sweep!'"), "name", "should match pattern"),
    "name-missing": (edit("name: t\n", ""), "name", "field required"),
    "name-too-long": (edit("name: t", "name: " + "x" * 101), "name", "at most 100 characters"),
    # ---- base
    "base-unknown-key": (edit("{preset: tiny}", "{preset: tiny, mask_prb: 0.5}"), "base.model.mask_prb",
                         "unknown key (did you mean 'mask_prob'?)"),
    "base-bad-value": (edit("max_steps: 100", "max_steps: -3"), "base.pretrain.max_steps", "greater than or equal to 1"),
    "base-not-a-mapping": ("name: t\nbase: [model, tiny]\n", "base", "valid dictionary"),
    "base-unknown-preset": (edit("preset: tiny}", "preset: tiny2}"), "base.model", "unknown preset 'tiny2'"),
    "base-whole-section": (edit("max_tokens: 384000", "max_tokens: 1000"), "base.data",
                           "max_tokens (1000) must be >= max_sample_size (48000)"),
    "base-wrong-type": (edit("device: cpu", "device: tpu"), "base.pretrain.device", "'auto', 'cpu' or 'cuda'"),
    # ---- variants
    "variant-unknown-key": (edit("model.mask_length: 5", "model.mask_lenght: 5"), "variants.span5.model.mask_lenght",
                            "unknown key (did you mean 'model.mask_length'?)"),
    "variant-bad-value": (edit("model.mask_length: 5", "model.mask_length: 0"), "variants.span5.model.mask_length",
                          "greater than or equal to 1"),
    "variant-not-a-mapping": (edit("{model.mask_length: 5}", "5"), "variants.span5", "valid dictionary"),
    "variant-bad-name": (edit("  span5:", "  'span 5':"), "variants.span 5", "a variant name is letters"),
    "variants-a-list": (edit("  vanilla: {}\n  span5: {model.mask_length: 5}\n", "  - vanilla\n  - span5\n"),
                        "variants", "valid dictionary"),
    "variant-nan": (edit("model.mask_length: 5", "model.mask_prob: .nan"), "variants.span5.model.mask_prob",
                    "must be a finite number, got nan"),
    # ---- baseline
    "baseline-missing": (edit("baseline: vanilla\n", ""), "baseline", "name the variant every other one is compared"),
    "baseline-typo": (edit("baseline: vanilla", "baseline: vanila"), "baseline",
                      "'vanila' is not a variant (did you mean 'vanilla'?)"),
    "baseline-changes-something": (edit("vanilla: {}", "vanilla: {model.mask_prob: 0.5}"), "variants.vanilla",
                                   "the baseline changes nothing"),
    "baseline-without-variants": ("name: t\nbaseline: vanilla\nbase: {model: {preset: tiny}}\n", "baseline",
                                  "but the sweep has no variants"),
    "variants-same-config": (edit("span5: {model.mask_length: 5}", "span10: {model.mask_length: 10}"), "span10",
                             "the same experiment as vanilla"),
    # ---- grid
    "grid-unknown-key": (edit(add="grid: {model.mask_prb: [0.5]}\n"), "grid.model.mask_prb",
                         "unknown key (did you mean 'model.mask_prob'?)"),
    "grid-no-values": (edit(add="grid: {model.mask_prob: []}\n"), "grid.model.mask_prob", "needs at least one value"),
    "grid-not-a-list": (edit(add="grid: {model.mask_prob: 0.5}\n"), "grid.model.mask_prob", "valid list"),
    "grid-bad-value": (edit(add="grid: {model.mask_prob: [0.5, 1.5]}\n"), "grid.model.mask_prob[1]",
                       "less than or equal to 1, got 1.5"),
    "grid-inf": (edit(add="grid: {model.mask_prob: [-.inf]}\n"), "grid.model.mask_prob[0]",
                 "must be a finite number, got -inf"),
    "grid-repeated-value": (edit(add="grid: {model.mask_prob: [0.5, 0.5]}\n"), "vanilla, mask_prob=0.5",
                            "the same experiment as vanilla, mask_prob=0.5"),
    # ---- seeds
    "seeds-empty": (edit(add="seeds: []\n"), "seeds", "at least 1 item"),
    "seeds-not-ints": (edit(add="seeds: [0, one]\n"), "seeds.1", "valid integer"),
    "seeds-not-a-list": (edit(add="seeds: 3\n"), "seeds", "valid list"),
    # ---- probe
    "probe-unknown-task": (with_tasks("[synth_pitch, synth_kye]"), "probe.tasks[1]",
                           "unknown probe task 'synth_kye' (did you mean 'synth_key'?)"),
    "probe-unknown-task-no-hint": (with_tasks("[zzzz]"), "probe.tasks[0]", "unknown probe task 'zzzz'; known:"),
    "probe-unknown-task-in-base": (edit(BASE_PROBE, BASE_PROBE + "  probe: {tasks: [synth_pich]}\n",
                                        "  tasks: [synth_pitch, synth_key]\n", ""),
                                   "base.probe.tasks[0]", "(did you mean 'synth_pitch'?)"),
    "probe-tasks-not-a-list": (with_tasks("synth_pitch"), "probe.tasks", "valid tuple"),
    "probe-unknown-key": (edit("every_steps: 50", "evry_steps: 50"), "probe.evry_steps",
                          "unknown key (did you mean 'every_steps'?)"),
    "probe-negative-every": (edit("every_steps: 50", "every_steps: -10"), "probe.every_steps",
                             "greater than or equal to 1"),
    "probe-negative-at": (with_probe("at_steps: [-5, 20]"), "probe.at_steps", "steps must be >= 1"),
    "probe-at-past-max": (with_probe("at_steps: [20, 500]"), "probe.at_steps",
                          "[500] are past every trial's pretrain.max_steps (at most 100)"),
    "probe-every-past-max": (edit("every_steps: 50", "every_steps: 250"), "probe.every_steps",
                             "only the final checkpoint would be probed"),
    "probe-cpus-zero": (with_probe("cpus: 0"), "probe.cpus", "greater than 0"),
    "probe-cpus-text": (with_probe("cpus: four"), "probe.cpus", "valid number"),
    "probe-cpus-inf": (with_probe("cpus: .inf"), "probe.cpus", "must be a finite number, got inf"),
    "probe-gpus-negative": (with_probe("gpus: -0.25"), "probe.gpus", "greater than or equal to 0"),
    "probe-max-concurrent": (with_probe("max_concurrent: 0"), "probe.max_concurrent", "greater than or equal to 1"),
    "probe-max-retries": (with_probe("max_retries: -1"), "probe.max_retries", "greater than or equal to 0"),
    "probe-layers-out-of-range": (edit(BASE_PROBE, BASE_PROBE + "  probe: {layers: 99}\n"), "base.probe.layers",
                                  "hidden state 99 is out of range: the encoder has states 0..4"),
    "probe-layers-negative": (edit(BASE_PROBE, BASE_PROBE + "  probe: {layers: -1}\n"), "base.probe.layers",
                              "out of range"),
    "probe-layers-in-a-variant": (edit("{model.mask_length: 5}", "{probe.layers: 5}"), "variants.span5.probe.layers",
                                  "hidden state 5 is out of range"),
    "probe-layers-unknown-word": (edit(BASE_PROBE, BASE_PROBE + "  probe: {layers: last}\n"), "base.probe.layers",
                                  "got 'last'"),
    # ---- scheduler
    "asha-metric-not-a-task": (edit(add="scheduler: {type: asha, metric: mtt}\n"), "scheduler.metric",
                               "'mtt' is neither 'average' nor a probe task"),
    "asha-grace-at-max": (edit(add="scheduler: {type: asha, grace_steps: 100}\n"), "scheduler.grace_steps",
                          "leaves ASHA nothing to stop"),
    "asha-grace-past-max": (edit(add="scheduler: {type: asha, grace_steps: 1000}\n"), "scheduler.grace_steps",
                            "leaves ASHA nothing to stop"),
    "asha-no-intermediate-probes": (edit("  every_steps: 50\n", "", add="scheduler: {type: asha}\n"), "scheduler",
                                    "ASHA acts on probe results during training"),
    "scheduler-bad-type": (edit(add="scheduler: {type: hyperband}\n"), "scheduler.type", "'none' or 'asha'"),
    "scheduler-reduction": (edit(add="scheduler: {type: asha, reduction_factor: 1}\n"), "scheduler.reduction_factor",
                            "greater than 1"),
    "scheduler-grace-zero": (edit(add="scheduler: {type: asha, grace_steps: 0}\n"), "scheduler.grace_steps",
                             "greater than or equal to 1"),
    # ---- resources
    "resources-cpus-zero": (edit(add="resources: {cpus_per_trial: 0}\n"), "resources.cpus_per_trial", "greater than 0"),
    "resources-workers-zero": (edit(add="resources: {workers_per_trial: 0}\n"), "resources.workers_per_trial",
                               "greater than or equal to 1"),
    "resources-gpus-negative": (edit(add="resources: {gpus_per_trial: -1}\n"), "resources.gpus_per_trial",
                                "greater than or equal to 0"),
    "resources-unknown-key": (edit(add="resources: {gpus: 1}\n"), "resources.gpus", "unknown key"),
    "resources-max-concurrent": (edit(add="resources: {max_concurrent_trials: 0}\n"),
                                 "resources.max_concurrent_trials", "greater than or equal to 1"),
    "max-failures-negative": (edit(add="max_failures: -1\n"), "max_failures", "greater than or equal to 0"),
    # ---- tracking
    "tracking-unknown-key": (edit(add="tracking: {experimnt: x}\n"), "tracking.experimnt",
                             "unknown key (did you mean 'experiment'?)"),
    "tracking-uri-not-text": (edit(add="tracking: {uri: 5}\n"), "tracking.uri", "valid string"),
    # ---- checkpoints (probe-only sweeps)
    "checkpoint-null": ("name: t\ncheckpoints: {a: null}\n", "checkpoints.a", "give the path of this checkpoint"),
    "checkpoint-missing-path": ("name: t\ncheckpoints: {a: {tmp}/nowhere}\n", "checkpoints.a", "no such checkpoint"),
    "checkpoint-not-a-checkpoint": ("name: t\ncheckpoints: {a: {tmp}/notckpt}\n", "checkpoints.a",
                                    "not a musicssl checkpoint folder, a Hugging Face model folder or a fairseq"),
    "checkpoint-hf-without-weights": ("name: t\ncheckpoints: {a: {tmp}/hf}\n", "checkpoints.a",
                                      "Hugging Face folder without model.safetensors"),
    "checkpoint-garbage-pt": ("name: t\ncheckpoints: {a: {tmp}/garbage.pt}\n", "checkpoints.a",
                              "not a readable fairseq checkpoint"),
    "checkpoint-corrupt-config": ("name: t\ncheckpoints: {a: {tmp}/badconfig}\n", "checkpoints.a",
                                  "not a readable checkpoint (JSONDecodeError"),
    "checkpoint-not-text": ("name: t\ncheckpoints: {a: 5}\n", "checkpoints.a", "valid string"),
    "checkpoints-with-variants": (edit(add="checkpoints: {a: {tmp}/notckpt}\n"), "checkpoints",
                                  "it has no variants or grid"),
    # ---- label_model (MusicHuBERT iteration 2)
    "label-model-unknown-sweep": (edit("model: {preset: tiny}",
                                       "model: {preset: tiny_hubert, hubert: {label_source: model, label_rate: 50}}",
                                       add="label_model: {sweep: nosuch, variant: vanilla}\n"),
                                  "label_model.sweep", "no run of sweep 'nosuch'"),
    "label-model-not-a-mapping": (edit(add="label_model: nosuch\n"), "label_model", "valid dictionary"),
    "label-model-no-variant": (edit(add="label_model: {sweep: it1}\n"), "label_model.variant", "field required"),
    "label-model-bad-step": (edit(add="label_model: {sweep: it1, variant: v, step: last}\n"), "label_model.step",
                             "'final'"),
    "label-model-bad-sweep-name": (edit(add="label_model: {sweep: 'a/b', variant: v}\n"), "label_model.sweep",
                                   "should match pattern"),
    "label-model-corrupt-config": (edit("model: {preset: tiny}", "model: {preset: tiny_hubert, hubert: {label_source: "
                                        "model, label_rate: 50, label_model: {tmp}/badconfig}}"),
                                   "base.model.hubert.label_model", "not a readable checkpoint"),
    # ---- duplicate YAML keys, with their dotted path
    "duplicate-top-level": (edit(add="probe: {cpus: 2}\n"), "probe", "duplicate key (lines 10 and 13)"),
    "duplicate-in-base": (edit("  model: {preset: tiny}\n", "  model: {preset: tiny}\n  model: {preset: tiny_hubert}\n"),
                          "base.model", "duplicate key (lines 7 and 8)"),
    "duplicate-variant": (edit("  span5: {model.mask_length: 5}\n",
                               "  span5: {model.mask_length: 5}\n  span5: {model.mask_length: 15}\n"),
                          "variants.span5", "duplicate key"),
    "duplicate-in-flow-mapping": (edit("max_steps: 100,", "max_steps: 100, max_steps: 200,"),
                                  "base.pretrain.max_steps", "YAML would silently keep the last value only"),
    # ---- NaN / infinity
    "nan-in-base": (edit("device: cpu", "device: cpu, lr: .nan"), "base.pretrain.lr", "must be a finite number"),
    "inf-in-base": (edit("max_sample_size: 48000", "max_sample_size: .inf"), "base.data.max_sample_size",
                    "must be a finite number, got inf"),
    # ---- model vs encoder and crop
    "top-k-past-the-encoder": (edit("{preset: tiny}", "{preset: tiny, music2vec: {average_top_k_layers: 50}}"),
                               "base.model.music2vec.average_top_k_layers",
                               "50 is more than the encoder's 4 layers"),
    "top-k-in-a-variant": (edit("{model.mask_length: 5}", "{model.music2vec.average_top_k_layers: 12}"),
                           "variants.span5.model.music2vec.average_top_k_layers", "12 is more than the encoder's 4"),
    "mask-span-past-the-crop": (edit("{model.mask_length: 5}", "{model.mask_length: 400}"),
                                "variants.span5.model.mask_length", "does not fit a crop"),
    "mask-span-in-the-grid": (edit("span5: {model.mask_length: 5}", "prob5: {model.mask_prob: 0.5}",
                                   add="grid: {model.mask_length: [20, 149]}\n"), "grid.model.mask_length",
                              "a span of 149 frames does not fit a crop of data.max_sample_size=48000 samples"),
    # ---- pretraining data
    "manifest-missing": (with_data("manifest: {tmp}/nowhere.tsv"), "base.data.manifest", "manifest not found"),
    "manifest-garbage": (with_data("manifest: {tmp}/garbage.tsv"), "base.data.manifest", "can't decode"),
    "manifest-not-a-manifest": (with_data("manifest: {tmp}/words.tsv"), "base.data.manifest",
                                "expected 'relpath<TAB>num_samples'"),
    "manifest-empty": (with_data("manifest: {tmp}/empty.tsv"), "base.data.manifest", "expected the root folder"),
    "manifest-a-folder": (with_data("manifest: {tmp}/empty"), "base.data.manifest", "manifest not found"),
    "labels-missing": (with_data("manifest: {tmp}/two.tsv, labels: {tmp}/nowhere.km", HUBERT), "base.data.labels",
                       "label file not found"),
    "labels-without-dictionary": (with_data("manifest: {tmp}/two.tsv, labels: {tmp}/nodict/train.km", HUBERT),
                                  "base.data.labels", "dict.km.txt: the dictionary beside the labels is missing"),
    "labels-wrong-line-count": (with_data("manifest: {tmp}/two.tsv, labels: {tmp}/km/train.km", HUBERT),
                                "base.data.labels", "has 1 lines but the manifest has 2 files"),
    # ---- probe dataset roots
    "real-task-without-root": (with_tasks("[synth_pitch, gtzan_genre]"), "probe.data_roots.gtzan_genre",
                               "task 'gtzan_genre' needs its dataset root"),
    "root-does-not-exist": (with_tasks("[gtzan_genre]", "data_roots: {gtzan_genre: {tmp}/nowhere}"),
                            "probe.data_roots.gtzan_genre", "is not a folder"),
    "root-is-a-file": (with_tasks("[gtzan_genre]", "data_roots: {gtzan_genre: {tmp}/afile}"),
                       "probe.data_roots.gtzan_genre", "is not a folder"),
    "root-empty-folder-gtzan": (with_tasks("[gtzan_genre]", "data_roots: {gtzan_genre: {tmp}/empty}"),
                                "probe.data_roots.gtzan_genre", "(the GTZAN layout); found no genres/ folder"),
    "root-empty-folder-nsynth": (with_tasks("[nsynth_pitch]", "data_roots: {nsynth_pitch: {tmp}/empty}"),
                                 "probe.data_roots.nsynth_pitch", "the NSynth json/wav layout"),
    "root-no-audio-gtzan": (with_tasks("[gtzan_genre]", "data_roots: {gtzan_genre: {tmp}/gtzan_no_train}"),
                            "probe.data_roots.gtzan_genre", "found no audio"),
    "root-in-base": (edit(BASE_PROBE, BASE_PROBE + "  probe: {data_roots: {emo: {tmp}/nowhere}}\n",
                          "[synth_pitch, synth_key]", "[emo]"),
                     "base.probe.data_roots.emo", "is not a folder"),
    "root-of-an-unknown-task": (with_tasks("[synth_pitch]", "data_roots: {gtzn_genre: {tmp}/empty}"),
                                "probe.data_roots.gtzn_genre", "unknown probe task 'gtzn_genre' (did you mean"),
    "root-not-text": (with_tasks("[gtzan_genre]", "data_roots: {gtzan_genre: {path: /data/GTZAN}}"),
                      "probe.data_roots.gtzan_genre", "valid string"),
    "root-null": (with_tasks("[gtzan_genre]", "data_roots: {gtzan_genre: null}"), "probe.data_roots.gtzan_genre",
                  "valid string"),
    # ---- whole file
    "unknown-top-level-key": (edit(add="varients: {}\n"), "varients", "unknown key (did you mean 'variants'?)"),
    "smoke-not-a-mapping": (edit(add="smoke: [tiny]\n"), "smoke", "valid dictionary"),
}


def run_check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    f = tmp_path / "sweep.yaml"
    f.write_text(text.replace("{tmp}", str(tmp_path)))
    code = main(["sweep", str(f), "--check", "--state-dir", str(tmp_path / "state"), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_malformed_sweep_fails_check_naming_the_path(case: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text, path, phrase = CASES[case]
    write_fixtures(tmp_path)
    code, out, err = run_check(tmp_path, text, capsys)
    assert code == 2, f"not caught: exit {code}\n{out}{err}"
    assert "Traceback" not in out + err
    lines = [line.strip().removeprefix("- ") for line in err.splitlines()]
    assert any(f"{path}: " in line and phrase in line for line in lines), f"{path!r} / {phrase!r} not in:\n{err}"
    assert not (tmp_path / "state").exists(), "a failed check may not create the state folder"


def test_the_mutations_are_of_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check(tmp_path, GOOD, capsys)
    assert (code, err) == (0, "")
    assert "OK, 2 trials (2 variants x 1 seeds)" in out
    assert not (tmp_path / "state").exists()


def test_problems_of_several_sections_are_reported_at_once(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # the file's own fields (name, seeds, probe, scheduler, resources, tracking, top level) in one pass ...
    text = edit("name: t", "name: 'a b'", "every_steps: 50", "every_steps: 0",
                add="seeds: []\nscheduler: {type: hb}\nresources: {cpus_per_trial: 0}\ntracking: {experimnt: x}\n"
                    "varients: {}\n")
    code, _, err = run_check(tmp_path, text, capsys)
    assert code == 2
    for path in ("name", "seeds", "probe.every_steps", "scheduler.type", "resources.cpus_per_trial",
                 "tracking.experimnt", "varients"):
        assert f"  - {path}: " in err, path
    assert "7 problems" in err
    # ... base, variants, grid and baseline in one pass ...
    text = edit("baseline: vanilla", "baseline: vanila", "{preset: tiny}", "{preset: tiny, mask_prb: 1}",
                "model.mask_length: 5", "model.mask_length: zero", add="grid: {model.mask_prb: [1]}\n")
    code, _, err = run_check(tmp_path, text, capsys)
    assert code == 2 and "4 problems" in err
    for path in ("base.model.mask_prb", "variants.span5.model.mask_length", "grid.model.mask_prb", "baseline"):
        assert f"  - {path}: " in err, path
    # ... and everything the trials would find out later, in one pass
    text = edit("[synth_pitch, synth_key]", "[synth_kye, gtzan_genre]\n  at_steps: [500]",
                "max_tokens: 384000", "max_tokens: 384000, manifest: /nowhere/train.tsv",
                BASE_PROBE, BASE_PROBE + "  probe: {layers: 99}\n",
                "{model.mask_length: 5}", "{model.mask_length: 400}",
                "{preset: tiny}", "{preset: tiny, music2vec: {average_top_k_layers: 50}}",
                add="scheduler: {type: asha, metric: mtt, grace_steps: 100}\n")
    code, _, err = run_check(tmp_path, text, capsys)
    assert code == 2 and "9 problems" in err
    for path in ("probe.tasks[0]", "probe.data_roots.gtzan_genre", "base.model.music2vec.average_top_k_layers",
                 "base.probe.layers", "base.data.manifest", "variants.span5.model.mask_length", "probe.at_steps",
                 "scheduler.metric", "scheduler.grace_steps"):
        assert f"  - {path}: " in err, path
    assert "Traceback" not in err
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(("overrides", "expected"), [
    (["grid.model.mask_prob=[0.5", "seeds=[0,"], ["'grid.model.mask_prob=[0.5': the value is not valid YAML",
                                                   "'seeds=[0,': the value is not valid YAML"]),
    (["=5"], ["'=5': expected KEY=VALUE"]),
    (["base.pretrain.max_stepz=7", "variants.span5.model.mask_lenght=7"],
     ["base.pretrain.max_stepz: unknown key", "variants.span5.model.mask_lenght: unknown key"]),
    (["variants.new={}"], ["new: the same experiment as vanilla"]),
])
def test_bad_command_line_overrides(overrides: list[str], expected: list[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_check(tmp_path, GOOD, capsys, *overrides)
    assert code == 2 and "Traceback" not in err
    for phrase in expected:
        assert phrase in err
    assert not (tmp_path / "state").exists()


def test_smoke_keeps_malformed_sections_for_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text, path in [(edit("probe:\n  tasks: [synth_pitch, synth_key]\n  every_steps: 50\n", "probe: 5\n"), "probe"),
                       (edit(add="scheduler: 5\n"), "scheduler"), (edit(add="smoke: 5\n"), "smoke"),
                       (with_probe("data_roots: [a]"), "probe.data_roots")]:
        code, _, err = run_check(tmp_path, text, capsys, "--smoke")
        assert code == 2 and f"{path}: input should be a valid dictionary" in err, err
        assert "Traceback" not in err


# ---------------------------------------------------------------- label_model against a state folder


def fake_iteration_one(state: Path, rows: list[dict[str, object]] | str, checkpoint: str | None = None) -> Path:
    """A finished-looking run of sweep `it1` in `state`: sweep.json, trials.json, optionally a checkpoint."""
    record = sweep_record(state, "it1")
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"parent_run_id": "0123456789abcdef"}))
    folder = work_dir(state, "it1", "0123456789abcdef")
    folder.mkdir()
    (folder / "trials.json").write_text(rows if isinstance(rows, str) else json.dumps(rows))
    if checkpoint:
        ckpts = folder / "trials" / "k1" / "checkpoints"
        (ckpts / checkpoint).mkdir(parents=True)
        (ckpts / checkpoint / "state.json").write_text("{}")
        (ckpts / "latest").write_text(checkpoint)
    return folder


ITER2 = edit("model: {preset: tiny}", "model: {preset: tiny_hubert, hubert: {label_source: model, label_rate: 50, "
             "label_layer: 2}}", add="label_model: {sweep: it1, variant: base, seed: 0}\n")
ROW = {"key": "k1", "variant": "base", "variant_name": "base", "seed": 0, "baseline": True}


@pytest.mark.parametrize(("rows", "checkpoint", "text", "path", "phrase"), [
    ([ROW], None, ITER2.replace("variant: base", "variant: bsae"), "label_model.variant",
     "sweep 'it1' has no trial of variant 'bsae' with seed 0; its variants: base"),
    ([ROW], None, ITER2.replace("seed: 0", "seed: 3"), "label_model.variant", "with seed 3"),
    ([ROW], None, ITER2, "label_model.step", "no checkpoint final of it1/base seed 0"),
    ([ROW], "step_000000010", ITER2.replace("seed: 0", "seed: 0, step: 20"), "label_model.step",
     "checkpoints there: step_000000010"),
    ("{garbage", None, ITER2, "label_model.sweep", "is unreadable (JSONDecodeError"),
    ([{"key": "k1"}], None, ITER2, "label_model.sweep", "is unreadable (KeyError"),
])
def test_label_model_not_found_in_the_state_folder(rows: list[dict[str, object]] | str, checkpoint: str | None,
                                                   text: str, path: str, phrase: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake_iteration_one(tmp_path / "state", rows, checkpoint)
    code, _, err = run_check(tmp_path, text, capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{path}: " in err and phrase in err, err


def test_label_model_found_and_its_layer_checked(tmp_path: Path, checkpoint: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    folder = fake_iteration_one(tmp_path / "state", [ROW])
    ckpts = folder / "trials" / "k1" / "checkpoints"
    shutil.copytree(checkpoint, ckpts / checkpoint.name)
    (ckpts / "latest").write_text(checkpoint.name)
    code, out, err = run_check(tmp_path, ITER2, capsys)
    assert (code, err) == (0, ""), err
    sweep = load_sweep(tmp_path / "sweep.yaml", state_dir=tmp_path / "state")
    assert sweep.trials[0].experiment.model.hubert.label_model == str(ckpts / checkpoint.name)
    code, _, err = run_check(tmp_path, ITER2.replace("label_layer: 2", "label_layer: 9"), capsys)
    assert code == 2
    assert "base.model.hubert.label_layer: layer 9 is out of range: the label model has layers 1..4" in err


def test_probe_layers_past_an_imported_checkpoint(tmp_path: Path, checkpoint: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    text = f"name: t\ncheckpoints: {{mine: {checkpoint}}}\nprobe: {{tasks: [synth_pitch]}}\n"
    assert run_check(tmp_path, text, capsys)[0] == 0
    code, _, err = run_check(tmp_path, text + "base: {probe: {layers: 9}}\n", capsys)
    assert code == 2
    assert f"base.probe.layers: hidden state 9 is out of range for {checkpoint} (states 0..4)" in err


# ---------------------------------------------------------------- check_cluster


def cluster_sweep(tmp_path: Path, overrides: list[str]) -> Sweep:
    f = tmp_path / "c.yaml"
    f.write_text(GOOD)
    return load_sweep(f, overrides)


def node(cpus: float, gpus: float = 0, alive: bool = True) -> dict[str, Any]:
    """One entry of `ray.nodes()`."""
    resources: dict[str, float] = {"CPU": cpus, "memory": 8e9, "object_store_memory": 2e9}
    if gpus:
        resources["GPU"] = gpus
    return {"NodeID": "n", "Alive": alive, "Resources": resources}


@pytest.mark.parametrize(("overrides", "nodes", "path", "phrase"), [
    (["resources.gpus_per_trial=1"], [node(2)], "resources", "a trial needs 1 CPU and 1 GPU on one node"),
    (["resources.cpus_per_trial=8"], [node(2), node(4)], "resources", "a trial needs 8 CPU and 0 GPU"),
    (["resources.workers_per_trial=3"], [node(1), node(1)], "resources", "a trial worker needs 1 CPU and 0 GPU on one "
                                                                       "node (x3 workers)"),
    (["resources.workers_per_trial=2", "resources.gpus_per_trial=1"], [node(8, 1)], "resources", "(x2 workers)"),
    (["resources.cpus_per_trial=2"], [node(1), node(8, alive=False)], "resources", "the cluster's nodes have 1 CPU/0 GPU"),
    (["probe.gpus=0.5"], [node(2)], "probe", "a probe job needs 1 CPU and 0.5 GPU on one node"),
    (["probe.cpus=4"], [node(2), node(2)], "probe", "a probe job needs 4 CPU"),
])
def test_check_cluster_reports_requests_no_node_can_hold(overrides: list[str], nodes: list[dict[str, Any]],
                                                         path: str, phrase: str, tmp_path: Path) -> None:
    problems = check_cluster(cluster_sweep(tmp_path, overrides), nodes)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: ") and phrase in problems[0], problems[0]


def test_check_cluster_reports_trials_and_probes_together(tmp_path: Path) -> None:
    sweep = cluster_sweep(tmp_path, ["resources.gpus_per_trial=1", "probe.gpus=0.5"])
    assert [p.split(":")[0] for p in check_cluster(sweep, [node(2)])] == ["resources", "probe"]
    assert [p.split(":")[0] for p in check_cluster(sweep, [])] == ["resources", "probe"]  # no node at all


@pytest.mark.parametrize(("overrides", "nodes"), [
    ([], [node(2)]),
    (["resources.cpus_per_trial=8", "resources.gpus_per_trial=1"], [node(2), node(16, 2)]),
    (["resources.workers_per_trial=3"], [node(1), node(2)]),  # workers spread over nodes
    (["resources.workers_per_trial=2", "resources.gpus_per_trial=0.5"], [node(4, 1)]),  # two halves of one GPU
    (["probe.gpus=0.25", "probe.cpus=4"], [node(1), node(4, 1)]),
])
def test_check_cluster_accepts_a_fitting_sweep(overrides: list[str], nodes: list[dict[str, Any]],
                                               tmp_path: Path) -> None:
    assert check_cluster(cluster_sweep(tmp_path, overrides), nodes) == []


def test_check_cluster_of_a_probe_only_sweep_ignores_trial_resources(tmp_path: Path, checkpoint: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(f"name: t\ncheckpoints: {{mine: {checkpoint}}}\nresources: {{gpus_per_trial: 1}}\n"
                 "probe: {tasks: [synth_pitch], gpus: 0.25}\n")
    sweep = load_sweep(f)
    problems = check_cluster(sweep, [node(4)])
    assert len(problems) == 1 and problems[0].startswith("probe: "), problems
    assert check_cluster(sweep, [node(4, 1)]) == []


def test_a_broken_section_does_not_hide_the_later_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Problems of the file, of the experiment configs and of the deep checks come out in one run."""
    f = tmp_path / "multi.yaml"
    f.write_text(GOOD.replace("  span5: {model.mask_length: 5}", "  span5: {model.mask_lenght: 5}")
                 .replace("tasks: [synth_pitch, synth_key]", "tasks: [synth_pitch, gtzan_genre, no_such_task]")
                 + "resources: {cpus_per_trial: 0}\n")
    state = tmp_path / "state"
    assert main(["sweep", str(f), "--check", "--state-dir", str(state)]) == 2
    err = capsys.readouterr().err
    assert "5 problems" not in err and "4 problems:" in err, err
    for expected in ("resources.cpus_per_trial: input should be greater than 0",
                     "variants.span5.model.mask_lenght: unknown key (did you mean 'model.mask_length'?)",
                     "probe.data_roots.gtzan_genre: task 'gtzan_genre' needs its dataset root",
                     "probe.tasks[2]: unknown probe task 'no_such_task'"):
        assert expected in err
    assert "the same experiment" not in err and "Traceback" not in err and not state.exists()
