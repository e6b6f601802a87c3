"""emoMusic arousal / valence regression (`emo`): 744 45-second clips, static (whole-clip) annotations.

Layout (the "1000 songs for emotional analysis of music" release, MediaEval 2013):

    <root>/clips_45seconds/<song_id>.mp3
    <root>/annotations/static_annotations.csv   song_id, mean_arousal, std_arousal, mean_valence, std_valence
    <root>/annotations/songs_info.csv           song_id, file_name, Artist, ..., Mediaeval 2013 set

Targets: (mean_arousal, mean_valence) on the 1-9 scale (the probe z-scores them with train statistics).
Split: MARBLE's `benchmark/tasks/EMO/preprocess.py` (adapted from jukemir) recomputed from songs_info.csv.
The "Mediaeval 2013 set" evaluation songs are test; a development song goes by its Artist: lower-cased, only
ASCII letters and whitespace kept, runs of whitespace made one space, the SHA-1 of that as an integer, modulo 10:
8 or 9 -> valid, 0-7 -> train (`artist_split`). An artist is thus never in both train and valid. A file
`<root>/musicssl_split.tsv` (`<song_id><TAB><train|valid|test>` lines) replaces this rule and then defines the
clips exactly (songs not listed are left out). Songs without a static annotation are left out.
Audio: the whole 45 s clip (MARBLE's preprocessing converts it whole; its MERT base config then crops 30 s,
applied here under probe.protocol=mert_base).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from musicssl.probe.datasets._common import (
    SPLIT_FILE,
    check_audio,
    check_root,
    layout_error,
    read_split_file,
    require_file,
)
from musicssl.probe.tasks import Example, TaskSpec

LAYOUT = "the emoMusic layout: clips_45seconds/ and annotations/"
VALID_BUCKETS, BUCKETS = 2, 10
OUTPUTS = ("arousal", "valence")


def _rows(root: Path, relative: str, needed: tuple[str, ...]) -> list[dict[str, str]]:
    path = require_file(root, relative, LAYOUT)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = [h.strip() for h in next(reader, [])]
        rows = [dict(zip(header, (v.strip() for v in r), strict=False)) for r in reader if any(v.strip() for v in r)]
    missing = [n for n in needed if n not in header]
    if missing:
        raise layout_error(root, f"{relative} with columns {', '.join(needed)}", LAYOUT,
                           f"found columns {header} (missing {missing})")
    return rows


def _set_column(header: list[str]) -> str | None:
    """The "Mediaeval 2013 set" column (development / evaluation)."""
    return next((h for h in header if "mediaeval" in h.lower()), None) or next(
        (h for h in header if "set" in h.lower().split()), None)


def artist_split(artist: str) -> str:
    """train or valid for a development-set artist, by MARBLE's (jukemir's) SHA-1 rule."""
    kept = "".join(c for c in artist.lower() if ord(c) < 128 and (c.isalpha() or c.isspace()))
    bucket = int(hashlib.sha1(" ".join(kept.split()).encode("utf-8")).hexdigest(), 16) % BUCKETS
    return "valid" if bucket >= BUCKETS - VALID_BUCKETS else "train"


def load(root: Path, task: TaskSpec) -> list[Example]:
    """Every annotated song: (arousal, valence) target, official test set, artist-disjoint train/valid."""
    root = check_root(root, LAYOUT)
    static = _rows(root, "annotations/static_annotations.csv", ("song_id", "mean_arousal", "mean_valence"))
    info = _rows(root, "annotations/songs_info.csv", ("song_id", "Artist"))
    set_column = _set_column(list(info[0])) if info else None
    if set_column is None:
        raise layout_error(root, "annotations/songs_info.csv with a 'Mediaeval 2013 set' column", LAYOUT,
                           "found no column naming the set")
    songs = {r["song_id"]: r for r in info}
    split_path = root / SPLIT_FILE
    override = read_split_file(split_path) if split_path.is_file() else None
    examples = []
    for row in static:
        song = row["song_id"]
        meta = songs.get(song)
        if meta is None:
            raise ValueError(f"{root}/annotations/songs_info.csv: no row for annotated song {song}")
        if override is not None:
            if song not in override:
                continue
            split = override[song]
        elif meta[set_column].lower().startswith("eval"):
            split = "test"
        elif meta[set_column].lower().startswith("dev"):
            split = artist_split(meta["Artist"])
        else:
            raise ValueError(f"{root}/annotations/songs_info.csv: song {song} has set {meta[set_column]!r}; "
                             "expected development or evaluation")
        name = meta.get("file_name") or f"{song}.mp3"
        target = np.array([float(row["mean_arousal"]), float(row["mean_valence"])], dtype=np.float32)
        examples.append(Example(root / "clips_45seconds" / name, split, target))
    if override is not None and (unknown := sorted(set(override) - {r["song_id"] for r in static})):
        raise ValueError(f"{split_path}: {len(unknown)} songs have no static annotation, e.g. {unknown[0]}")
    return check_audio(root, examples, "clips_45seconds/<song_id>.mp3 for every annotated song", LAYOUT)
