"""probe.protocol: MARBLE's music2vec configs (30 s windows, no crop; the default) or its task base configs
(mert_base: EMO and VocalSet in 5 s windows of the first 30 s), and segments reaching the feature extractor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from musicssl.config import ProbeConfig
from musicssl.probe import run
from musicssl.probe.features import Features
from musicssl.probe.tasks import Example, TaskSpec, get_task


def test_protocol_switches_task_windows_and_crops() -> None:
    assert ProbeConfig().protocol == "music2vec" and ProbeConfig().window_seconds == 30.0
    for name in ("emo", "vocalset_singer", "vocalset_technique"):
        assert get_task(name).windowing("music2vec", 30.0) == (30.0, None)
        assert get_task(name).windowing("mert_base", 30.0) == (5.0, 30.0)
    assert get_task("gtzan_genre").windowing("mert_base", 30.0) == (30.0, None)
    assert get_task("emo").windowing("music2vec", 12.0) == (12.0, None)
    with pytest.raises(pydantic.ValidationError, match="protocol"):
        ProbeConfig(protocol="mert")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown probe protocol 'x'; known: music2vec, mert_base"):
        get_task("emo").windowing("x", 30.0)


@pytest.mark.parametrize(("protocol", "window", "crop"), [("music2vec", 30.0, None), ("mert_base", 5.0, 30.0)])
def test_task_features_extracts_with_the_protocols_window_crop_and_segments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str, window: float, crop: float | None) -> None:
    clips = [Example(tmp_path / "a.wav", "train", 1, 0, 132000),
             Example(tmp_path / "a.wav", "valid", 2, 132000, 264000),
             Example(tmp_path / "b.wav", "test", 3)]

    def load(root: Path, task: TaskSpec) -> list[Example]:
        return clips

    task = dataclasses.replace(get_task("vocalset_singer"), load=load)
    seen: dict[str, object] = {}

    def fake_extract(cache_dir: Path, key: str, encoder: object, paths: list[Path], window_seconds: float,
                     normalize: bool, device: torch.device, **kwargs: object) -> Features:
        seen.update(key=key, paths=paths, window=window_seconds, **kwargs)
        return Features(np.zeros((3, 2, 4), np.float32), np.arange(3))

    monkeypatch.setattr(run, "cached_extract_resumable", fake_extract)
    cfg = ProbeConfig(protocol=protocol, data_roots={"vocalset_singer": str(tmp_path)})  # type: ignore[arg-type]
    _, targets, splits = run.task_features(None, "digest", True, task, cfg,  # type: ignore[arg-type]
                                           synthetic_root=None, cache_dir=tmp_path, device=torch.device("cpu"))
    assert (seen["window"], seen["crop_seconds"]) == (window, crop)
    assert seen["segments"] == [(0, 132000), (132000, 264000), None]
    assert seen["key"] == run.cache_key("digest", "vocalset_singer", [e.path for e in clips], window, True, crop,
                                        [(0, 132000), (132000, 264000), None])
    assert targets.tolist() == [1, 2, 3] and splits.tolist() == [0, 1, 2]
