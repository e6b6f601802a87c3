"""VocalSet singer identification (`vocalset_singer`, 20 singers) and technique (`vocalset_technique`, 10),
built as MARBLE v1's `benchmark/tasks/VocalSet/preprocess.py` builds them, recomputed from the user's tree.

Layout (VocalSet 1.1 `FULL/` or VocalSet 1.2 `data_by_singer/`):

    <root>/FULL/<singer>/<context>/<folder>/<file>.wav     e.g. FULL/female1/arpeggios/belt/f1_arpeggios_belt_a.wav

Singers are female1-female9 and male1-male11. Files under `__MACOSX` or named `._*` are ignored.

Files: the wavs four levels below FULL/ whose folder is, by exact name, one of MARBLE's 17 (`FOLDERS`: the 10
techniques and fast_forte, fast_piano, forte, messa, pp, slow_forte, slow_piano); a folder spelt otherwise
(e.g. vibrado) is left out, as MARBLE leaves it out. MARBLE flattens each folder over singers and contexts and
reads the singer from the file name's first `_` field ("f2", "m10"): a name without a singer code gets its
singer folder's code in front (MARBLE renames 28 such files this way) and the five files MARBLE deletes
(`DROPPED`) are left out. If two files of a folder end up with the same name, the one that sorts last by path
is kept (MARBLE's flat extraction keeps one).

Trim and chunks: leading silence is cut by SoX's voice-activity detector as `torchaudio.functional.vad` ports
it, with its default parameters (`vad_start`; it trims the front only, and a recording in which it finds no
voice gives nothing). The rest is cut into chunks of 132,000 frames at 44.1 kHz (MARBLE's `sr // 1000 * 3000`,
2.993 s; another rate is mapped onto 44.1 kHz frames as MARBLE resamples first) while more than one chunk is
left, so the remainder, even a whole last chunk, is dropped: n = (frames - 1) // 132000. Each chunk is one
Example (a frame range of its file) that the feature extractor standardises on its own, as MARBLE normalises
each chunk file. Targets: the technique from the folder, the singer from the (corrected) file-name code.

Splits (MARBLE seeds numpy's global generator with 42617 and its three `GroupShuffleSplit` calls draw from it
in this order; musicssl passes one `numpy.random.RandomState(42617)` to the same sklearn calls):
- groups: MARBLE's `file_id`, a file's index in its flattened folder sorted by name. It keeps a file's chunks
  together and also groups the files of equal index in different folders, as MARBLE's does.
- technique: test = the chunks of singers f2, f8, m3, m5, m10; the chunks of the other 15 singers are split by
  `GroupShuffleSplit(n_splits=1, test_size=0.4)` into train and valid (the 0.4 part), so valid holds the
  train singers: it is recording-disjoint, not singer-disjoint.
- singer: all chunks of the 17 folders; `GroupShuffleSplit(test_size=0.2)` gives test, then
  `GroupShuffleSplit(test_size=0.4)` of the rest gives valid.

Trimming needs the head of every recording; each file's rate, length and trim point are kept in an index under
`$XDG_CACHE_HOME/musicssl/vocalset/` (default `~/.cache`), keyed on the file's size and mtime, so a later load
reads no audio unless a file changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from sklearn.model_selection import GroupShuffleSplit

from musicssl.probe.datasets._common import check_audio, check_root, layout_error
from musicssl.probe.tasks import Example, TaskSpec

log = logging.getLogger(__name__)

SINGERS = tuple(f"female{i}" for i in range(1, 10)) + tuple(f"male{i}" for i in range(1, 12))
TECHNIQUES = ("belt", "breathy", "inhaled", "lip_trill", "spoken", "straight", "trill", "trillo", "vibrato",
              "vocal_fry")
FOLDERS = TECHNIQUES + ("fast_forte", "fast_piano", "forte", "messa", "pp", "slow_forte", "slow_piano")
TEST_SINGERS = ("female2", "female8", "male3", "male5", "male10")
"""The technique task's test singers (MARBLE's list, the release's test_singers_technique.txt)."""
DROPPED = {("vibrato", n) for n in ("f2_scales_vibrato_a(1).wav", "caro_vibrato.wav", "dona_vibrato.wav",
                                    "row_vibrato.wav", "slow_vibrato_arps.wav")}
"""(folder, file) pairs MARBLE deletes: a duplicate and four recordings outside the paper's table 2."""
SEED = 42617
CHUNK_RATE, CHUNK_FRAMES = 44100, 132000
LAYOUT = "the VocalSet layout: FULL/<singer>/<context>/<technique>/*.wav"
INDEX_VERSION = 1


def code(singer: str) -> str:
    """female1 -> f1, male10 -> m10 (the code VocalSet file names start with)."""
    return singer[0] + singer.removeprefix("female").removeprefix("male")


CODES = {code(s): s for s in SINGERS}


@dataclass(frozen=True)
class Chunk:
    """One 3 s chunk of MARBLE's preprocessing: file, folder, singer, group and frame range."""

    path: Path
    folder: str
    singer: str
    file_id: int
    start: int
    stop: int


# ---------------------------------------------------------------- trimming (SoX / torchaudio VAD)


def _hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic, as torch.hann_window


def vad_start(wave: np.ndarray, rate: int) -> int | None:
    """The frame where `torchaudio.functional.vad(wave, rate)` (default parameters) starts its output, or None
    when it finds no voice (it returns nothing). SoX's detector: a smoothed, noise-reduced cepstral power is
    measured 20 times a second over 0.1 s; once its 0.25 s average reaches 7, the start moves back over quieter
    bursts up to 1 s earlier (gaps under 0.25 s). Arithmetic in float64 (torchaudio's is float32)."""
    measure_len = int(rate * 0.1 + 0.5)
    dft_len = 16
    while dft_len < measure_len:
        dft_len *= 2
    period = int(rate / 20.0 + 0.5)
    n_meas, gap = 20, int(0.25 * 20 + 0.5)
    kept_len = n_meas * period + measure_len  # the detector keeps this much audio before its trigger point
    s0, s1 = max(int(50.0 / rate * dft_len + 0.5), 1), min(int(6000.0 / rate * dft_len + 0.5), dft_len // 2)
    c0, c1 = math.ceil(rate * 0.5 / 2000.0), min(math.floor(rate * 0.5 / 150.0), dft_len // 4)
    spec_window = 2.0 / math.sqrt(measure_len) * _hann(measure_len)
    cep_window = 2.0 / math.sqrt(s1 - s0) * _hann(s1 - s0)
    up, down = math.exp(-1.0 / (0.1 * 20)), math.exp(-1.0 / (0.01 * 20))
    smooth, trigger_mult = math.exp(-1.0 / (0.4 * 20)), math.exp(-1.0 / (0.25 * 20))
    boot, boot_max = 0, int(0.35 * 20 - 0.5)
    spectrum, noise = np.zeros(s1 - s0), np.zeros(s1 - s0)
    measures, index, mean = np.zeros(n_meas), 0, 0.0
    for pos in range(measure_len, len(wave), period):
        buf = np.zeros(dft_len)
        buf[:measure_len] = wave[pos - measure_len:pos] * spec_window
        mult = boot / (1.0 + boot) if boot >= 0 else smooth
        spectrum = spectrum * mult + np.abs(np.fft.rfft(buf)[s0:s1]) * (1 - mult)
        power = spectrum ** 2
        noise_mult = 0.0 if boot >= 0 else np.where(power > noise, up, down)
        noise = noise * noise_mult + power * (1 - noise_mult)
        cep = np.zeros(dft_len // 2)
        cep[s0:s1] = np.sqrt(np.maximum(0.0, power - 1.35 * noise)) * cep_window
        total = float(np.sum(np.abs(np.fft.rfft(cep)[c0:c1]) ** 2))
        measures[index] = max(0.0, 21 + math.log(total / (c1 - c0))) if total > 0 else 0.0
        mean = mean * trigger_mult + measures[index] * (1 - trigger_mult)
        if mean >= 7.0:
            j_trigger = j_zero = n_meas
            k = index
            for j in range(n_meas):  # walk back over the ring of measures to the earliest burst kept
                if measures[k] >= 7.0 and j <= j_trigger + gap:
                    j_zero = j_trigger = j
                elif measures[k] == 0 and j_trigger >= j_zero:
                    j_zero = j
                k = (k + n_meas - 1) % n_meas
            flushed = (n_meas - min(n_meas - 1, j_zero)) * period
            return max(pos - kept_len + flushed, 0)
        index = (index + 1) % n_meas
        if boot >= 0:
            boot = -1 if boot == boot_max else boot + 1
    return None


def _trim(path: Path) -> tuple[int, int, int | None]:
    """(rate, frames, VAD start) of one recording; the head is read first, the whole file only if needed."""
    info = sf.info(str(path))
    rate, frames = int(info.samplerate), int(info.frames)
    head = min(frames, 10 * rate)
    for length in dict.fromkeys((head, frames)):
        data, _ = sf.read(str(path), frames=length, dtype="float32", always_2d=True)
        start = vad_start(data.mean(axis=1, dtype=np.float64), rate)
        if start is not None:
            return rate, frames, start
    return rate, frames, None


def _index_path(tree: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    name = hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:16]
    return base / "musicssl" / "vocalset" / f"{name}.json"


def trims(tree: Path, paths: list[Path]) -> dict[Path, tuple[int, int, int | None]]:
    """(rate, frames, VAD start) of every path, from the index where size and mtime still match."""
    index_path = _index_path(tree)
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except json.JSONDecodeError:
        index = {}
    if index.get("version") != INDEX_VERSION:
        index = {"version": INDEX_VERSION, "files": {}}
    files, out, changed = index["files"], {}, False
    for path in paths:
        stat, rel = path.stat(), path.relative_to(tree).as_posix()
        entry = files.get(rel)
        if entry is None or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
            try:
                entry = [stat.st_size, stat.st_mtime_ns, *_trim(path)]
            except (sf.LibsndfileError, RuntimeError) as exc:  # reported and skipped; re-read once it changes
                log.warning("%s: unreadable recording skipped (%s)", path, exc)
                entry = [stat.st_size, stat.st_mtime_ns, 0, 0, None]
            files[rel], changed = entry, True
        out[path] = (entry[2], entry[3], entry[4])
    if changed:
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_path)
    return out


def chunk_ranges(rate: int, frames: int, start: int | None) -> list[tuple[int, int]]:
    """Frame ranges of the 3 s chunks of a recording trimmed at `start` (None: no voice, no chunks)."""
    if start is None or frames <= start:
        return []
    scale = rate / CHUNK_RATE
    length = math.ceil((frames - start) / scale)  # frames at 44.1 kHz, as MARBLE resamples before chunking
    n = (length - 1) // CHUNK_FRAMES
    edges = [start + round(i * CHUNK_FRAMES * scale) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


# ---------------------------------------------------------------- files, chunks, splits


def _tree(root: Path) -> Path:
    for name in ("FULL", "data_by_singer"):
        if (root / name).is_dir():
            return root / name
    raise layout_error(root, "FULL/<singer>/<context>/<technique>/<file>.wav", LAYOUT,
                       "found neither FULL/ (VocalSet 1.1) nor data_by_singer/ (VocalSet 1.2)")


def recordings(root: Path) -> dict[str, list[tuple[str, Path]]]:
    """folder -> [(MARBLE's file name, path)] sorted by that name, for MARBLE's 17 folders."""
    tree = _tree(root)
    by_name: dict[tuple[str, str], Path] = {}
    for path in sorted(tree.rglob("*.wav")):
        parts = path.relative_to(tree).parts
        if "__MACOSX" in parts or path.name.startswith("."):
            continue
        if parts[0] not in SINGERS:
            raise ValueError(f"{path}: singer folder {parts[0]!r} is not one of {SINGERS[0]}..{SINGERS[-1]}")
        if len(parts) != 4 or parts[2] not in FOLDERS or (parts[2], path.name) in DROPPED:
            continue
        name = path.name if path.name.split("_")[0] in CODES else f"{code(parts[0])}_{path.name}"
        by_name[parts[2], name] = path
    if not by_name:
        raise layout_error(root, f"{tree.name}/<singer>/<context>/<technique>/<file>.wav in folders "
                           f"{', '.join(FOLDERS)}", LAYOUT, "found none")
    out: dict[str, list[tuple[str, Path]]] = {}
    for (folder, name), path in sorted(by_name.items()):
        out.setdefault(folder, []).append((name, path))
    return out


def chunks(root: Path) -> list[Chunk]:
    """Every chunk of MARBLE's preprocessing, in its order (folder, file name, chunk)."""
    tree = _tree(root)
    files = recordings(root)
    info = trims(tree, [p for listed in files.values() for _, p in listed])
    return [Chunk(path, folder, CODES[name.split("_")[0]], file_id, a, b)
            for folder, listed in files.items() for file_id, (name, path) in enumerate(listed)
            for a, b in chunk_ranges(*info[path])]


def _group_split(groups: np.ndarray, test_size: float, rng: np.random.RandomState) -> np.ndarray:
    """Mask of the `test_size` part of sklearn's GroupShuffleSplit (one split, drawing from `rng`)."""
    if len(np.unique(groups)) < 2:
        raise ValueError(f"VocalSet: {len(np.unique(groups))} recording group(s) to split; MARBLE's split needs "
                         "at least 2 (is the tree complete?)")
    _, held = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=rng)
                   .split(np.zeros((len(groups), 1)), groups=groups))
    mask = np.zeros(len(groups), dtype=bool)
    mask[held] = True
    return mask


def marble_splits(items: list[Chunk]) -> tuple[list[str | None], list[str]]:
    """(technique split or None for chunks outside the 10 techniques, singer split) of every chunk."""
    rng = np.random.RandomState(SEED)
    groups = np.array([c.file_id for c in items])
    technique: list[str | None] = [None] * len(items)
    tech = [i for i, c in enumerate(items) if c.folder in TECHNIQUES]
    rest = [i for i in tech if items[i].singer not in TEST_SINGERS]
    valid = _group_split(groups[rest], 0.4, rng)
    for i in tech:
        technique[i] = "test"
    for i, v in zip(rest, valid, strict=True):
        technique[i] = "valid" if v else "train"
    test = _group_split(groups, 0.2, rng)
    keep = np.flatnonzero(~test)
    valid = _group_split(groups[keep], 0.4, rng)
    singer = ["test" if t else "train" for t in test]
    for k, v in zip(keep.tolist(), valid, strict=True):
        singer[k] = "valid" if v else "train"
    return technique, singer


def load_technique(root: Path, task: TaskSpec) -> list[Example]:
    """The chunks of the 10 techniques; test = 5 singers, train/valid by recording group (MARBLE)."""
    root = check_root(root, LAYOUT)
    items = chunks(root)
    technique, _ = marble_splits(items)
    examples = [Example(c.path, s, TECHNIQUES.index(c.folder), c.start, c.stop)
                for c, s in zip(items, technique, strict=True) if s is not None]
    return check_audio(root, examples, "<singer>/<context>/<technique>/<file>.wav", LAYOUT)


def load_singer(root: Path, task: TaskSpec) -> list[Example]:
    """The chunks of the 17 folders with their singer index; group shuffle splits 0.2 test, then 0.4 valid."""
    root = check_root(root, LAYOUT)
    items = chunks(root)
    _, singer = marble_splits(items)
    examples = [Example(c.path, s, SINGERS.index(c.singer), c.start, c.stop)
                for c, s in zip(items, singer, strict=True)]
    return check_audio(root, examples, "<singer>/<context>/<technique>/<file>.wav", LAYOUT)
