"""`--smoke`: any sweep file shrunk to a CPU run of a few minutes, keeping its variants, grid and seeds.

What changes (everything else is kept as the file says):

| setting | under --smoke |
|---|---|
| sweep name | `<name>-smoke` (its own MLflow parent run and state folder; never resumes the real sweep) |
| model | the `tiny` / `tiny_hubert` preset of the same paradigm; the file's encoder settings are dropped |
| layer counts | `average_top_k_layers`, `label_layer` scaled to the tiny encoder's 4 layers (8 of 12 -> 3, 12 -> 4) |
| k-means clusters | k / 20 (500 -> 25, 2000 -> 100), at least 8 |
| data | the synthetic corpus; crops scaled so the base crop is 3 s (30 s -> 3 s, 5 s -> 0.5 s), 8 crops of 3 s per batch |
| steps | the base run is 60 updates; every step count (max_steps, variants, checkpoints, warm-up, probe schedule, ASHA grace) scales with it; at most one probe point besides the final one |
| probes | real tasks without a dataset root become synthetic stand-ins of the same kind (`STAND_INS`); 2 s windows, z-scored features, short training |
| resources | 1 CPU per trial and per probe job, no GPU, one worker (the file's max_concurrent_trials is kept) |
| label_model | the iteration-1 sweep's smoke run (`<sweep>-smoke`), its final checkpoint |

A file's own `smoke:` section (overrides in the file's syntax) is applied last.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from musicssl.config import PRESETS, deep_merge
from musicssl.config_io import flatten, set_dotted

SMOKE_STEPS = 60
SMOKE_CROP = 48000  # 3 s
SMOKE_LAYERS = 4  # the tiny presets

STAND_INS = {
    "mtt": "synth_tags", "mtg_top50": "synth_tags", "mtg_genre": "synth_tags", "mtg_instrument": "synth_tags",
    "mtg_moodtheme": "synth_tags", "gtzan_genre": "synth_instrument", "nsynth_instrument": "synth_instrument",
    "vocalset_singer": "synth_instrument", "vocalset_technique": "synth_instrument", "giantsteps_key": "synth_key",
    "nsynth_pitch": "synth_pitch", "emo": "synth_tempo", "gtzan_beat": "synth_beat",
}
"""Synthetic stand-in of each real probe task (same kind of target) for smoke runs without its dataset."""

_DROP = object()
FIXED = {
    "data.min_sample_size": 8000, "data.max_tokens": 384000, "pretrain.update_freq": 1, "pretrain.log_every": 10,
    "pretrain.device": "cpu", "probe.window_seconds": 2.0, "probe.standardize": True, "probe.lr": 0.005,
    "probe.max_epochs": 60, "probe.early_stop_patience": 10,
}
"""Smoke settings of every trial, whatever the file says."""


def shrink(data: Mapping[str, Any], source: str = "", roots: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `--smoke` version of a sweep file's raw data (before validation); `roots`: dataset roots given on the
    command line (their tasks stay real)."""
    out = copy.deepcopy(dict(data))
    from musicssl.sweep.spec import probe_settings_into_base  # spec imports this module

    probe_settings_into_base(out)  # `probe.lr` etc. of the file join base.probe, where the smoke settings replace them
    base = dict(out.get("base") or {}) if isinstance(out.get("base"), Mapping) else {}
    flat = flatten(base)
    paradigm, layers = _model_of(flat)
    steps_in = _int(flat.get("pretrain.max_steps"), 400000)
    crop_in = _int(flat.get("data.max_sample_size"), 480000)
    rule = _rules(SMOKE_STEPS / max(steps_in, 1), SMOKE_CROP / max(crop_in, 1), SMOKE_LAYERS / max(layers, 1))

    new_base: dict[str, Any] = {}
    for key, value in flat.items():
        new = rule(key, value)
        if new is not _DROP:
            new_base = set_dotted(new_base, key, new)
    new_base = set_dotted(new_base, "model.preset", "tiny_hubert" if paradigm == "musichubert" else "tiny")
    new_base = set_dotted(new_base, "pretrain.max_steps", SMOKE_STEPS)
    new_base = set_dotted(new_base, "data.max_sample_size", SMOKE_CROP)
    for key, value in FIXED.items():
        new_base = set_dotted(new_base, key, value)
    out["base"] = new_base

    if isinstance(out.get("variants"), Mapping):
        out["variants"] = {name: _shrink_changes(changes, rule) for name, changes in out["variants"].items()}
    if isinstance(out.get("grid"), Mapping):
        out["grid"] = {k: [_kept(rule, k, v) for v in vals] if isinstance(vals, list) else vals
                       for k, vals in out["grid"].items()}
    out["name"] = f"{out.get('name', 'sweep')}-smoke"
    if isinstance(out.get("probe") or {}, Mapping):  # anything else is left for validation to report
        out["probe"] = _shrink_probe(dict(out.get("probe") or {}), flat, SMOKE_STEPS / max(steps_in, 1), roots or {})
    if isinstance(out.get("scheduler") or {}, Mapping):
        sched = dict(out.get("scheduler") or {})
        if "grace_steps" in sched:
            sched["grace_steps"] = max(1, round(_int(sched["grace_steps"], 1) * SMOKE_STEPS / max(steps_in, 1)))
        out["scheduler"] = sched
    raw_resources = out.get("resources")
    resources: Mapping[str, Any] = raw_resources if isinstance(raw_resources, Mapping) else {}
    out["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0, "workers_per_trial": 1,
                        "max_concurrent_trials": resources.get("max_concurrent_trials")}
    if isinstance(out.get("label_model"), Mapping):
        ref = dict(out["label_model"])
        ref["sweep"] = f"{ref.get('sweep')}-smoke"
        ref["step"] = "final"
        out["label_model"] = ref
    smoke_extra = out.pop("smoke", None) or {}
    if not isinstance(smoke_extra, Mapping):  # left in place for validation to report (`smoke: 5`)
        out["smoke"] = smoke_extra
        return out
    return deep_merge(out, smoke_extra)


def _rules(f_steps: float, f_crop: float, f_layers: float) -> Callable[[str, Any], Any]:
    """key, value -> the smoke value (or `_DROP` to fall back to the tiny preset's / FIXED value)."""

    def steps(v: Any) -> Any:
        return max(1, round(v * f_steps)) if isinstance(v, int) and not isinstance(v, bool) else v

    def layer(v: Any) -> Any:
        return min(SMOKE_LAYERS, max(1, round(v * f_layers))) if isinstance(v, int) else v

    def rule(key: str, value: Any) -> Any:
        if key.startswith("model.encoder.") or key in {"model.hubert.final_dim", "model.music2vec.ema_anneal_end_step",
                                                       "model.music2vec.var_check_after", "data.manifest",
                                                       "data.labels", "pretrain.max_time_s", "model.paradigm"}:
            return _DROP
        if key in FIXED or key.startswith("resources."):
            return _DROP
        if key == "model.preset":
            return "tiny_hubert" if _preset_paradigm(value) == "musichubert" else "tiny"
        if key in {"model.music2vec.average_top_k_layers", "model.hubert.label_layer"}:
            return layer(value)
        if key == "model.hubert.num_clusters":
            return max(8, round(value / 20)) if isinstance(value, int) else value
        if key == "data.max_sample_size":
            return max(8000, round(value * f_crop)) if isinstance(value, int) else value
        if key in {"pretrain.max_steps", "pretrain.warmup_steps"}:
            return steps(value)
        if key == "pretrain.checkpoint_every":
            return max(10, steps(value)) if isinstance(value, int) else value
        if key == "probe.tasks" and isinstance(value, list):
            return _stand_ins(value, {})
        return value

    return rule


def _shrink_changes(changes: Any, rule: Callable[[str, Any], Any]) -> Any:
    if not isinstance(changes, Mapping):
        return changes
    return {key: _kept(rule, key, value) for key, value in flatten(changes).items()}


def _kept(rule: Callable[[str, Any], Any], key: str, value: Any) -> Any:
    """A variant's or grid point's smoke value: what it varies stays varied (a dropped key keeps its value)."""
    new = rule(key, value)
    return value if new is _DROP else new


def _shrink_probe(probe: dict[str, Any], base: Mapping[str, Any], f_steps: float,
                  given: Mapping[str, Any]) -> dict[str, Any]:
    in_file = probe.get("data_roots")
    roots = {**{k.removeprefix("probe.data_roots."): v for k, v in base.items() if k.startswith("probe.data_roots.")},
             **(in_file if isinstance(in_file, Mapping) else {}), **given}
    tasks = probe.get("tasks")
    if isinstance(tasks, list):
        probe["tasks"] = _stand_ins(tasks, roots)
    elif isinstance(base.get("probe.tasks"), list):
        probe["tasks"] = _stand_ins(base["probe.tasks"], roots)
    if isinstance(probe.get("every_steps"), int):
        probe["every_steps"] = max(SMOKE_STEPS // 2, round(probe["every_steps"] * f_steps))
    if isinstance(probe.get("at_steps"), list):
        probe["at_steps"] = sorted({max(1, round(s * f_steps)) for s in probe["at_steps"] if isinstance(s, int)})
    probe["cpus"], probe["gpus"] = 1, 0
    return probe


def _stand_ins(tasks: list[Any], roots: Mapping[str, Any]) -> list[Any]:
    """Real tasks without a dataset root -> their synthetic stand-ins (order kept, duplicates dropped)."""
    out = [STAND_INS.get(t, t) if isinstance(t, str) and t not in roots else t for t in tasks]
    return list(dict.fromkeys(out))


def _model_of(flat: Mapping[str, Any]) -> tuple[str, int]:
    """Paradigm and layer count of the base model (preset, then explicit settings)."""
    preset = flat.get("model.preset")
    cfg = PRESETS[preset]() if isinstance(preset, str) and preset in PRESETS else None
    paradigm = flat.get("model.paradigm") or (cfg.paradigm if cfg else "music2vec")
    layers = flat.get("model.encoder.num_layers") or (cfg.encoder.num_layers if cfg else 12)
    return str(paradigm), _int(layers, 12)


def _preset_paradigm(name: Any) -> str:
    return PRESETS[name]().paradigm if isinstance(name, str) and name in PRESETS else "music2vec"


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
