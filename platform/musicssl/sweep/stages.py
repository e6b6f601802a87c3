"""Sweeps that build on earlier sweeps: where a sweep's trials live in the state folder, found by name.

A sweep run writes `<state>/sweeps/<name>/sweep.json` (its MLflow parent run) and, in its work folder, an index
`trials.json` of its trials (key, variant, seed). MusicHuBERT iteration 2 names its label model as
(sweep, variant, seed, step) of an iteration-1 sweep; `resolve_label_model` turns that into the checkpoint path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musicssl.paths import default_state_dir

if TYPE_CHECKING:
    from musicssl.sweep.schema import LabelModelRef
    from musicssl.sweep.spec import Trial


def sweep_record(state_dir: Path, name: str) -> Path:
    """`<state>/sweeps/<name>/sweep.json`: the parent run of the latest run of sweep `name`."""
    return state_dir / "sweeps" / name / "sweep.json"


def work_dir(state_dir: Path, name: str, parent_run_id: str) -> Path:
    """The folder of one run of a sweep: trials (checkpoints), Ray Tune's storage, the trial index."""
    return state_dir / "sweeps" / name / parent_run_id[:12]


def write_trial_index(folder: Path, trials: list[Trial]) -> None:
    """`trials.json`: key, variant, seed of every trial (what later stages look trials up by)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"key": t.key, "variant": t.variant, "variant_name": t.variant_name, "seed": t.seed,
             "baseline": t.baseline} for t in trials]
    (folder / "trials.json").write_text(json.dumps(rows, indent=1))


def resolve_label_model(ref: LabelModelRef, state_dir: Path | None) -> str:
    """The checkpoint folder `ref` names, or a problem line starting with `label_model` that says what to do."""

    state_dir = state_dir or default_state_dir()
    record = sweep_record(state_dir, ref.sweep)
    todo = f"run `musicssl sweep` on the iteration-1 sweep {ref.sweep!r} first, with the same state folder ({state_dir})"
    if not record.exists():
        return f"label_model.sweep: no run of sweep {ref.sweep!r} in {state_dir}: {todo}"
    try:  # files of an earlier run: a corrupt one is a problem line, not a traceback
        info: dict[str, Any] = json.loads(record.read_text())
        folder = work_dir(state_dir, ref.sweep, info["parent_run_id"])
        index = folder / "trials.json"
        rows = json.loads(index.read_text()) if index.exists() else []
        names = sorted({r["variant_name"] or r["variant"] for r in rows})
        match = [r for r in rows if ref.variant in (r["variant_name"], r["variant"]) and r["seed"] == ref.seed]
    except (OSError, ValueError, LookupError, TypeError, AttributeError) as exc:
        return (f"label_model.sweep: the run record of sweep {ref.sweep!r} in {state_dir} is unreadable "
                f"({type(exc).__name__}: {exc}); {todo}")
    if not match:
        return (f"label_model.variant: sweep {ref.sweep!r} has no trial of variant {ref.variant!r} with seed "
                f"{ref.seed}; its variants: {', '.join(names) or 'none recorded'}")
    ckpts = folder / "trials" / match[0]["key"] / "checkpoints"
    if ref.step == "final":
        pointer = ckpts / "latest"
        name = pointer.read_text().strip() if pointer.exists() else None
    else:
        name = f"step_{ref.step:09d}"
    if name is None or not (ckpts / name / "state.json").exists():
        have = sorted(p.name for p in ckpts.glob("step_*")) if ckpts.exists() else []
        return (f"label_model.step: no checkpoint {ref.step} of {ref.sweep}/{ref.variant} seed {ref.seed} in {ckpts}"
                f" (checkpoints there: {', '.join(have) or 'none'}); {todo}")
    return str(ckpts / name)
