"""GiantSteps key detection (`giantsteps_key`): train/valid from GiantSteps-MTG-key, test = GiantSteps key.

Layout: both GitHub repositories (with their audio downloaded by the repositories' scripts) side by side:

    <root>/giantsteps-mtg-key-dataset/annotations/annotations.txt   ID<TAB>MANUAL KEY<TAB>C (confidence 0-2)
    <root>/giantsteps-mtg-key-dataset/annotations/beatport_metadata.txt   ID<TAB>ARTIST<TAB>... (tab-separated)
    <root>/giantsteps-mtg-key-dataset/audio/<ID>.LOFI.mp3
    <root>/giantsteps-key-dataset/annotations/key/<ID>.LOFI.key      one key, e.g. "Gb major"
    <root>/giantsteps-key-dataset/audio/<ID>.LOFI.mp3                 (or .wav from convert_audio.sh)

Train/valid (the jukemir subset MARBLE uses): the MTG-key tracks annotated with confidence 2 and one
unambiguous key (no "-", "/" or "X minor / Y major" labels); tracks that are also in the test set are left out.
The split is MARBLE's `benchmark/tasks/GS/preprocess.py` rule (from jukemir), recomputed from
beatport_metadata.txt (`artist_splits`): a track's ARTIST field is split at commas; each artist (stripped) is
valid when the SHA-1 of its lower-cased name, as an integer, modulo 116 is 100 or more (16 of 116), else train;
then, twice over the metadata rows in file order, every artist of a track that has a valid artist becomes valid
(collaborators, two hops). A track's split is its artists' split, so no artist is in both train and valid.
MARBLE stops with an assertion when a kept track still has artists in both; musicssl then carries on
propagating until none does. A file `<root>/musicssl_split.tsv` (`<ID><TAB><train|valid>` lines) replaces
this rule and then defines the train/valid subset exactly (tracks not listed are left out). Test: all 604
GiantSteps key tracks.
Labels: `KEYS` of the task registry ("C major" ... "B minor"); flats become sharps (Gb -> F#, Cb -> B).
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

from musicssl.probe.datasets._common import (
    SPLIT_FILE,
    check_audio,
    check_root,
    layout_error,
    read_split_file,
    require_file,
)
from musicssl.probe.metrics import PITCH_CLASSES
from musicssl.probe.tasks import KEYS, Example, TaskSpec

MTG_DIR, GS_DIR = "giantsteps-mtg-key-dataset", "giantsteps-key-dataset"
LAYOUT = f"the GiantSteps layout: {MTG_DIR}/ and {GS_DIR}/ side by side, audio in their audio/ folders"
BUCKETS, TRAIN_BUCKETS = 116, 100
_NATURAL = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_KEY = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭]?)\s*(major|minor|maj|min)\s*$", re.IGNORECASE)


def parse_key(text: str) -> str | None:
    """`"Gb major"` -> `"F# major"` (a `KEYS` entry); None for anything that is not one tonic and one mode."""
    match = _KEY.match(text)
    if match is None:
        return None
    tonic, accidental, mode = match.groups()
    shift = {"#": 1, "♯": 1, "b": -1, "♭": -1}.get(accidental, 0)
    pitch = PITCH_CLASSES[(_NATURAL[tonic.upper()] + shift) % 12]
    return f"{pitch} {'major' if mode.lower().startswith('maj') else 'minor'}"


def _audio(folder: Path, track: str) -> Path:
    mp3 = folder / "audio" / f"{track}.LOFI.mp3"
    wav = mp3.with_suffix(".wav")
    return wav if not mp3.is_file() and wav.is_file() else mp3


def gs_key_tracks(root: Path) -> dict[str, str]:
    """GiantSteps key: track ID -> key (a `KEYS` entry)."""
    folder = root / GS_DIR / "annotations" / "key"
    files = sorted(folder.glob("*.LOFI.key"))
    if not files:
        raise layout_error(root, f"{GS_DIR}/annotations/key/<ID>.LOFI.key", LAYOUT, "found no key annotations")
    tracks = {}
    for path in files:
        key = parse_key(path.read_text())
        if key is None:
            raise ValueError(f"{path}: expected one key such as 'Gb major', got {path.read_text().strip()!r}")
        tracks[path.name.removesuffix(".LOFI.key")] = key
    return tracks


def mtg_tracks(root: Path) -> dict[str, str]:
    """GiantSteps-MTG-key tracks with confidence 2 and one key: track ID -> key."""
    path = require_file(root, f"{MTG_DIR}/annotations/annotations.txt", LAYOUT)
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r]
    if not rows or [c.strip().upper() for c in rows[0][:3]] != ["ID", "MANUAL KEY", "C"]:
        raise layout_error(root, f"{MTG_DIR}/annotations/annotations.txt with header ID<TAB>MANUAL KEY<TAB>C",
                           LAYOUT, f"found header {rows[0] if rows else 'nothing'}")
    tracks = {}
    for row in rows[1:]:
        key = parse_key(row[1]) if len(row) >= 3 and row[2].strip() == "2" else None
        if key is not None:
            tracks[row[0].strip()] = key
    return tracks


def _artists(field: str) -> list[str]:
    return [a.strip() for a in field.strip().split(",")]


def artist_splits(root: Path, kept: set[str]) -> tuple[dict[str, list[str]], set[str]]:
    """(track ID -> the artists of its beatport_metadata.txt row, the artists MARBLE puts in valid).

    `kept`: the tracks that will be used; propagation goes on past MARBLE's two passes only while one of them
    still has artists in both splits (where MARBLE's run stops). See the module docstring for the rule."""
    path = require_file(root, f"{MTG_DIR}/annotations/beatport_metadata.txt", LAYOUT)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"ID", "ARTIST"} <= set(rows[0]):
        raise layout_error(root, f"{MTG_DIR}/annotations/beatport_metadata.txt with columns ID and ARTIST", LAYOUT,
                           f"found columns {list(rows[0]) if rows else 'nothing'}")
    tracks = {r["ID"].strip(): _artists(r["ARTIST"] or "") for r in rows}
    valid = {a for artists in tracks.values() for a in artists
             if int(hashlib.sha1(a.lower().encode("utf-8")).hexdigest(), 16) % BUCKETS >= TRAIN_BUCKETS}

    def mixed(artists: list[str]) -> bool:
        return bool(valid.intersection(artists)) and not valid.issuperset(artists)

    passes = 0
    while passes < 2 or any(mixed(tracks[t]) for t in kept if t in tracks):
        for artists in tracks.values():  # in file order: a row sees the artists earlier rows made valid
            if mixed(artists):
                valid.update(artists)
        passes += 1
    return tracks, valid


def load(root: Path, task: TaskSpec) -> list[Example]:
    """MTG-key train/valid (confidence 2; MARBLE's artist rule or a split file) and the GiantSteps key test set."""
    root = check_root(root, LAYOUT)
    test = gs_key_tracks(root)
    train_valid = {k: v for k, v in mtg_tracks(root).items() if k not in test}
    split_path = root / SPLIT_FILE
    if split_path.is_file():
        chosen = read_split_file(split_path, ("train", "valid"))
        unknown = sorted(set(chosen) - set(train_valid))
        if unknown:
            raise ValueError(f"{split_path}: {len(unknown)} IDs are not confidence-2 single-key MTG-key tracks "
                             f"outside the test set, e.g. {unknown[0]}")
    else:
        tracks, valid = artist_splits(root, set(train_valid))
        missing = sorted(t for t in train_valid if t not in tracks)
        if missing:
            raise ValueError(f"{root}/{MTG_DIR}/annotations/beatport_metadata.txt: {len(missing)} annotated tracks "
                             f"have no row, e.g. {missing[0]}")
        chosen = {t: "valid" if valid.intersection(tracks[t]) else "train" for t in train_valid}
    examples = [Example(_audio(root / MTG_DIR, t), chosen[t], KEYS.index(train_valid[t])) for t in sorted(chosen)]
    examples += [Example(_audio(root / GS_DIR, t), "test", KEYS.index(k)) for t, k in sorted(test.items())]
    return check_audio(root, examples, "<dataset>/audio/<ID>.LOFI.mp3 for every annotated track", LAYOUT)
