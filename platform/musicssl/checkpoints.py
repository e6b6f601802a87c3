"""Checkpoint folders on disk, as probes, sweeps, model export and training all see them: their file names, the
run's `latest` and `best` pointers, pins that keep a checkpoint from pruning, and reading a checkpoint's encoder.

Writing checkpoints and restoring a run from one is `musicssl.pretrain.checkpoint`; the folder layout is
described there. Nothing here imports from the packages above it (models, pretrain, probe, sweep).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from musicssl.config import ExperimentConfig

ENCODER_FILE, CONFIG_FILE = "encoder.safetensors", "config.json"


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


def load_encoder_checkpoint(path: Path) -> tuple[ExperimentConfig, dict[str, torch.Tensor], str]:
    """Config, encoder weights and content hash of a checkpoint folder (for probing)."""
    for name in (ENCODER_FILE, CONFIG_FILE):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path}: not a musicssl checkpoint (missing {name})")
    cfg = ExperimentConfig.model_validate_json((path / CONFIG_FILE).read_text())
    meta_path = path / "state.json"
    digest = json.loads(meta_path.read_text())["encoder_sha256"] if meta_path.exists() else file_sha256(path / ENCODER_FILE)
    return cfg, load_file(str(path / ENCODER_FILE)), digest
