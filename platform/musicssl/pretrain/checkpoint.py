"""Writing a run's checkpoints, and restoring a run from one (what only training does).

A checkpoint is a folder `step_000123/` holding
- `encoder.safetensors` + `config.json`: the student encoder and the experiment config (what probes load),
- `model.safetensors`: the whole model (student, head, teacher),
- `optimizer.safetensors` + `state.json`: optimiser tensors, param groups, step, data position, RNG states.
It is built in a temporary sibling folder and renamed into place, then `latest` is rewritten atomically, so
a write killed midway leaves the previous checkpoint loadable. Finding, pinning and reading checkpoints, which
probes, sweeps and model export share, is `musicssl.checkpoints`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from musicssl.checkpoints import CONFIG_FILE, ENCODER_FILE, atomic_write_text, file_sha256, pins
from musicssl.config import ExperimentConfig


@dataclass
class TrainState:
    """What besides weights a run needs to continue exactly."""

    step: int
    data_epoch: int
    data_index: int
    extra: dict[str, Any]


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete the `.tmp-*` folders of checkpoint writes that were killed (a run has one writer, so at its start
    every such folder is a leftover); returns what was removed."""
    stale = sorted((run_dir / "checkpoints").glob(".tmp-*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def save_checkpoint(run_dir: Path, cfg: ExperimentConfig, model: nn.Module, encoder: nn.Module,
                    optimizer: torch.optim.Optimizer, state: TrainState, rng: dict[str, torch.Tensor],
                    keep_last: int = 2, score: float | None = None) -> Path:
    """Write `run_dir/checkpoints/step_{step:09d}` atomically; keep the newest `keep_last` plus the best.

    `score` (lower is better; the loop passes the mean training loss since the last checkpoint) updates the
    `best` pointer when it improves on the best so far. Returns the checkpoint's path.
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{state.step:09d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(encoder.state_dict()), str(tmp / ENCODER_FILE))
    save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    flat = {f"state.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    flat.update({f"rng.{k}": v for k, v in rng.items()})
    save_file(_tensors(flat), str(tmp / "optimizer.safetensors"))
    meta = {"step": state.step, "data_epoch": state.data_epoch, "data_index": state.data_index,
            "extra": state.extra, "param_groups": opt["param_groups"],
            "encoder_sha256": file_sha256(tmp / ENCODER_FILE)}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    (tmp / CONFIG_FILE).write_text(cfg.model_dump_json(indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    best = json.loads((root / "best.json").read_text()) if (root / "best.json").exists() else None
    if score is not None and math.isfinite(score) and (best is None or score < best["score"]):
        best = {"name": final.name, "step": state.step, "score": score}
        atomic_write_text(root / "best.json", json.dumps(best))
    prune_checkpoints(run_dir, keep_last)
    return final


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[str]:
    """Delete checkpoints beyond the newest `keep_last`, keeping the best and every pinned one; return the deleted."""
    root = run_dir / "checkpoints"
    best = json.loads((root / "best.json").read_text())["name"] if (root / "best.json").exists() else None
    keep = set(pins(root)) | {best}
    deleted = []
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
            deleted.append(old.name)
    return deleted


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Restore model and optimiser in place from `path`; return the train state and the saved RNG states."""
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    flat = load_file(str(path / "optimizer.safetensors"))
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    rng = {}
    for key, value in flat.items():
        kind, _, rest = key.partition(".")
        if kind == "rng":
            rng[rest] = value
        else:
            idx, _, name = rest.partition(".")
            per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    state = TrainState(meta["step"], meta["data_epoch"], meta["data_index"], meta.get("extra", {}))
    return state, rng


def load_checkpoint_rng(path: Path) -> dict[str, torch.Tensor]:
    """The RNG states saved with a checkpoint: ``torch`` / ``mask`` of rank 0 and ``rank<r>.<name>`` of the other
    ranks of a multi-worker run."""
    flat = load_file(str(path / "optimizer.safetensors"))
    return {key.removeprefix("rng."): value for key, value in flat.items() if key.startswith("rng.")}
