"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a folder `step_000123/` holding
- `encoder.safetensors` + `config.json`: the student encoder and the experiment config (what probes load),
- `model.safetensors`: the whole model (student, head, teacher),
- `optimizer.safetensors` + `state.json`: optimiser tensors, param groups, step, data position, RNG states.
It is built in a temporary sibling folder and renamed into place, then `latest` is rewritten atomically, so
a write killed midway leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import hashlib
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

from musicssl.config import ExperimentConfig

ENCODER_FILE, CONFIG_FILE = "encoder.safetensors", "config.json"


@dataclass
class TrainState:
    """What besides weights a run needs to continue exactly."""

    step: int
    data_epoch: int
    data_index: int
    extra: dict[str, Any]


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` through a temporary sibling and a rename: readers see the old or the new text, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the content key of a checkpoint's encoder)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


PIN_DIR = "pins"


def pin_checkpoint(checkpoint: Path, holder: str, payload: dict[str, Any]) -> Path:
    """Keep `checkpoint` on disk until `holder` (e.g. a pending probe job) unpins it; `payload` is kept with the pin
    (a probe job's spec, so an interrupted sweep can submit it again)."""
    folder = checkpoint.parent / PIN_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{checkpoint.name}--{holder}.json"
    atomic_write_text(path, json.dumps(payload))
    return path


def unpin_checkpoint(checkpoint: Path, holder: str) -> None:
    """Release `holder`'s pin (missing pins are fine: a retried job may unpin twice)."""
    (checkpoint.parent / PIN_DIR / f"{checkpoint.name}--{holder}.json").unlink(missing_ok=True)


def pins(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Pinned checkpoints of a `checkpoints/` folder: checkpoint name -> the payloads of its pins."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((root / PIN_DIR).glob("*--*.json")):
        name = path.name.split("--", 1)[0]
        try:
            out.setdefault(name, []).append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):  # a pin is kept even if its payload is unreadable
            out.setdefault(name, [])
    return out


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the lowest score so far (see `save_checkpoint`), or None."""
    record = run_dir / "checkpoints" / "best.json"
    if not record.exists():
        return None
    path = record.parent / json.loads(record.read_text())["name"]
    return path if (path / "state.json").exists() else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


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


def load_encoder_checkpoint(path: Path) -> tuple[ExperimentConfig, dict[str, torch.Tensor], str]:
    """Config, encoder weights and content hash of a checkpoint folder (for probing)."""
    for name in (ENCODER_FILE, CONFIG_FILE):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: not a musicssl checkpoint (missing {name})")
    cfg = ExperimentConfig.model_validate_json((path / CONFIG_FILE).read_text())
    meta_path = path / "state.json"
    digest = json.loads(meta_path.read_text())["encoder_sha256"] if meta_path.exists() else file_sha256(path / ENCODER_FILE)
    return cfg, load_file(str(path / ENCODER_FILE)), digest
