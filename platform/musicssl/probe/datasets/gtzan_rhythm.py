"""GTZAN-Rhythm v2 beats on GTZAN audio (`gtzan_beat`, MARBLE v1 `GTZANBT`).

Layout: the GTZAN root of `gtzan.py` (audio and the fault-filtered lists, whose split the beat task shares) plus
the GTZAN-Rhythm v2 annotations (Marchand & Peeters 2015), one `<genre>.000NN.wav.jams` per clip in the first of
`JAMS_DIRS` found under the root:

    <root>/genres/<genre>/<genre>.000NN.wav     <root>/{train,valid,test}_filtered.txt
    <root>/jams/<genre>.000NN.wav.jams          (or GTZAN-Rhythm_v2_ismir2015_lbd/jams/, ...)

Targets are each clip's beat times in seconds (the beat probe, `probe/beat.py`, turns them into frame targets).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from musicssl.probe.datasets import gtzan
from musicssl.probe.tasks import Example, TaskSpec

JAMS_DIRS = ("jams", "GTZAN-Rhythm_v2_ismir2015_lbd/jams", "GTZAN-Rhythm_v2_ismir2015_lbd", "rhythm/jams")
"""Where under the dataset root the GTZAN-Rhythm v2 `<genre>.000NN.wav.jams` files are looked for, in order."""


def read_jams_beats(path: Path) -> np.ndarray:
    """Sorted beat times of a JAMS file: the first `beat`-namespace annotation that is not a downbeat one.

    GTZAN-Rhythm v2 stores beats and downbeats as two `beat` annotations told apart by
    `sandbox.annotation_type`; observations are `{"time": ...}` objects (JAMS >= 0.2) or a `time` list.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JAMS (JSON) file: {exc}") from exc
    for ann in doc.get("annotations", []):
        if (
            ann.get("namespace") != "beat"
            or (ann.get("sandbox") or {}).get("annotation_type", "beat") != "beat"
        ):
            continue
        data = ann.get("data", [])
        times = data.get("time", []) if isinstance(data, dict) else [obs["time"] for obs in data]
        return np.sort(np.asarray(times, dtype=np.float64))
    raise ValueError(f"{path}: no beat annotation (namespace 'beat', sandbox.annotation_type 'beat')")


def load(root: Path, task: TaskSpec) -> list[Example]:
    """GTZAN audio + GTZAN-Rhythm v2 beats, in the genre task's fault-filtered split.

    Clips, splits and audio files are exactly those of `gtzan_genre` (`probe/datasets/gtzan.py`: the
    `{train,valid,test}_filtered.txt` lists in the root, `genres/<genre>/<genre>.000NN.wav`, jazz.00054 left
    out of train); the beats come from `<genre>.000NN.wav.jams` in the first of JAMS_DIRS under the root.
    """
    clips = gtzan.load(root, task)
    jams_dir = next((Path(root) / d for d in JAMS_DIRS if (Path(root) / d).is_dir()), None)
    if jams_dir is None:
        raise FileNotFoundError(
            f"{root}: expected the GTZAN-Rhythm v2 JAMS files in one of {', '.join(JAMS_DIRS)}; found none of them"
        )
    jams = [jams_dir / f"{e.path.stem}.wav.jams" for e in clips]
    missing = [p.name for p in jams if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{jams_dir}: {len(missing)} of {len(clips)} listed clips have no JAMS file, e.g. {', '.join(missing[:3])}"
        )
    return [Example(e.path, e.split, read_jams_beats(j)) for e, j in zip(clips, jams, strict=True)]
