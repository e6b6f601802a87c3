"""Shared fixtures: a tiny synthetic corpus generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from musicssl.config import SyntheticCorpusConfig
from musicssl.data.corpus import generate_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic corpus (pretraining pieces + labelled probe clips)."""
    cfg = SyntheticCorpusConfig(seed=3, num_pieces=12, piece_seconds=3.0, probe_clips=120, clip_seconds=1.5)
    return generate_corpus(cfg, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def checkpoint(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Music2Vec checkpoint after 5 CPU updates on `tiny_corpus` (for probe tests)."""
    import torch

    from musicssl.config import DataConfig, ExperimentConfig, PretrainConfig, tiny
    from musicssl.data.manifest import read_manifest
    from musicssl.pretrain.loop import pretrain

    torch.set_num_threads(2)
    cfg = ExperimentConfig(model=tiny(), data=DataConfig(max_sample_size=16000, min_sample_size=8000, max_tokens=32000),
                           pretrain=PretrainConfig(max_steps=5, checkpoint_every=5, device="cpu"))
    return pretrain(cfg, tmp_path_factory.mktemp("run"), read_manifest(tiny_corpus / "pretrain" / "train.tsv"))
