"""VocalSet as MARBLE's preprocess.py builds it: VAD-trimmed recordings in 3 s chunks (remainder dropped), each
chunk standardised on its own, technique split by recording group among the 15 non-test singers, singer split
by two group shuffle splits, all drawing from numpy seed 42617."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicssl.config import tiny
from musicssl.models.encoder import SSLEncoder
from musicssl.probe import features as F
from musicssl.probe.datasets import vocalset
from musicssl.probe.tasks import get_task

SR = 44100


def voice(seconds: float, silence: float = 0.5, gain: float = 0.2, seed: int = 0) -> np.ndarray:
    """`silence` s of digital silence, then a 220 Hz harmonic tone (what the detector takes for voice)."""
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * 220 * h * t) / h for h in range(1, 15))
    tone = gain * tone + np.random.default_rng(seed).normal(0, 0.001, len(t))
    return np.concatenate([np.zeros(int(silence * SR)), tone]).astype(np.float32)


def wav(path: Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, SR, subtype="FLOAT")


# (singer, context, folder, file name, wave); 0.5 s silence + 2.9 s tone -> trimmed at 0.4 s -> 3.0 s -> 1 chunk
FILES = [
    ("female1", "arpeggios", "belt", "f1_arpeggios_belt_a.wav", None),
    ("female1", "arpeggios", "belt", "f1_arpeggios_belt_e.wav", None),
    ("female2", "arpeggios", "belt", "f2_arpeggios_belt_a.wav", None),
    ("male1", "scales", "belt", "m1_scales_belt_a.wav", "long"),  # 3 s silence + 6 s: 2 chunks (3 untrimmed)
    ("male4", "scales", "belt", "m4_scales_belt_a.wav", None),
    ("female4", "arpeggios", "straight", "arpeggios_straight_a.wav", None),  # no singer code: f4_ put in front
    ("female4", "scales", "straight", "f4_scales_straight_a.wav", None),
    ("male3", "scales", "straight", "m3_scales_straight_a.wav", None),
    ("male11", "long_tones", "straight", "m11_long_straight.wav", None),
    ("female3", "scales", "lip_trill", "f3_scales_lip_trill.wav", None),
    ("female5", "scales", "lip_trill", "f5_scales_lip_trill.wav", "silent"),  # no voice found: no chunks
    ("male2", "scales", "lip_trill", "m2_scales_lip_trill.wav", None),
    ("female6", "scales", "vibrato", "f6_scales_vibrato_a.wav", None),
    ("female2", "scales", "vibrato", "f2_scales_vibrato_a(1).wav", None),  # MARBLE deletes it
    ("female2", "excerpts", "vibrato", "caro_vibrato.wav", None),  # MARBLE deletes it
    ("male8", "scales", "vibrato", "m8_scales_vibrato_a.wav", None),
    ("male9", "arpeggios", "breathy", "m9_arpeggios_breathy_a.wav", None),
    ("female7", "arpeggios", "breathy", "f7_arpeggios_breathy_a.wav", None),
    ("female6", "long_tones", "vibrado", "f6_long_vibrado.wav", None),  # not one of MARBLE's folders
    ("male11", "long_tones", "messa", "m11_long_messa.wav", None),  # singer task only
    ("female9", "long_tones", "forte", "f9_long_forte.wav", None),  # singer task only
]


def make_vocalset(root: Path) -> None:
    """The `FILES` tree in VocalSet's layout (also the fake VocalSet of tests/sweep/test_shipped_sweeps.py)."""
    for i, (singer, context, folder, name, kind) in enumerate(FILES):
        wave = (voice(6.0, silence=3.0, seed=i) if kind == "long" else np.zeros(SR * 2, np.float32)
                if kind == "silent" else voice(2.9, seed=i))
        wav(root / "FULL" / singer / context / folder / name, wave)
    wav(root / "FULL" / "female1" / "stray.wav", voice(2.9))  # not four levels down: ignored


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "vocalset"
    make_vocalset(root)
    return root


def test_vad_trims_leading_silence_and_chunks_drop_the_remainder() -> None:
    wave = voice(6.0, silence=3.0).astype(np.float64)
    start = vocalset.vad_start(wave, SR)
    assert start == 127890  # 2.9 s: the detector keeps 0.1 s before the onset it finds at 3 s
    assert vocalset.chunk_ranges(SR, len(wave), start) == [(127890, 259890), (259890, 391890)]
    assert len(vocalset.chunk_ranges(SR, len(wave), 0)) == 3  # untrimmed, the same 9 s would give 3 chunks
    assert vocalset.vad_start(np.zeros(SR * 2), SR) is None
    assert vocalset.chunk_ranges(SR, 10 * SR, None) == []
    # n = (L - 1) // 132000: exactly two chunks' worth keeps one (MARBLE cuts while more than a chunk is left)
    assert len(vocalset.chunk_ranges(SR, 264000, 0)) == 1 and len(vocalset.chunk_ranges(SR, 264001, 0)) == 2
    assert vocalset.chunk_ranges(22050, 22050 * 7, 0) == [(0, 66000), (66000, 132000)]  # mapped onto 44.1 kHz


def test_chunks_follow_marble_file_names_groups_and_trimming(tree: Path) -> None:
    got = [(c.folder, c.path.name, c.singer, c.file_id, c.start, c.stop) for c in vocalset.chunks(tree)]
    one = (17640, 149640)  # trimmed at 0.4 s, one 132000-frame chunk, 2310 frames left over
    assert got == [
        ("belt", "f1_arpeggios_belt_a.wav", "female1", 0, *one),
        ("belt", "f1_arpeggios_belt_e.wav", "female1", 1, *one),
        ("belt", "f2_arpeggios_belt_a.wav", "female2", 2, *one),
        ("belt", "m1_scales_belt_a.wav", "male1", 3, 127890, 259890),
        ("belt", "m1_scales_belt_a.wav", "male1", 3, 259890, 391890),
        ("belt", "m4_scales_belt_a.wav", "male4", 4, *one),
        ("breathy", "f7_arpeggios_breathy_a.wav", "female7", 0, *one),
        ("breathy", "m9_arpeggios_breathy_a.wav", "male9", 1, *one),
        ("forte", "f9_long_forte.wav", "female9", 0, *one),
        ("lip_trill", "f3_scales_lip_trill.wav", "female3", 0, *one),
        ("lip_trill", "m2_scales_lip_trill.wav", "male2", 2, *one),  # index 1 is the silent f5 file
        ("messa", "m11_long_messa.wav", "male11", 0, *one),
        ("straight", "arpeggios_straight_a.wav", "female4", 0, *one),  # sorted as f4_arpeggios_straight_a
        ("straight", "f4_scales_straight_a.wav", "female4", 1, *one),
        ("straight", "m11_long_straight.wav", "male11", 2, *one),
        ("straight", "m3_scales_straight_a.wav", "male3", 3, *one),
        ("vibrato", "f6_scales_vibrato_a.wav", "female6", 0, *one),
        ("vibrato", "m8_scales_vibrato_a.wav", "male8", 1, *one),
    ]


def _group_shuffle(groups: list[int], test_size: float, rng: np.random.RandomState) -> set[int]:
    """The held-out groups of sklearn's GroupShuffleSplit, written out: a permutation of the sorted unique
    groups, the first ceil(test_size * n) held out."""
    unique = np.unique(groups)
    perm = rng.permutation(len(unique))
    return set(unique[perm[:math.ceil(test_size * len(unique))]].tolist())


def test_technique_and_singer_splits_are_marbles_group_shuffle_splits(tree: Path) -> None:
    items = vocalset.chunks(tree)
    rng = np.random.RandomState(42617)
    rest = [c for c in items if c.folder in vocalset.TECHNIQUES and c.singer not in vocalset.TEST_SINGERS]
    valid_groups = _group_shuffle([c.file_id for c in rest], 0.4, rng)
    test_groups = _group_shuffle([c.file_id for c in items], 0.2, rng)
    left = [c.file_id for c in items if c.file_id not in test_groups]
    singer_valid_groups = _group_shuffle(left, 0.4, rng)

    technique = vocalset.load_technique(tree, get_task("vocalset_technique"))
    assert len(technique) == 16  # the 18 chunks less messa and forte
    expected = {}
    for c in items:
        if c.folder in vocalset.TECHNIQUES:
            expected[c.path, c.start] = ("test" if c.singer in vocalset.TEST_SINGERS else
                                         "valid" if c.file_id in valid_groups else "train",
                                         vocalset.TECHNIQUES.index(c.folder))
    assert {(e.path, e.start): (e.split, e.target) for e in technique} == expected
    by_split = {s: {e.path.parts[-4] for e in technique if e.split == s} for s in ("train", "valid", "test")}
    assert by_split["test"] == {"female2", "male3"}
    assert by_split["valid"] and not by_split["valid"] & set(vocalset.TEST_SINGERS)
    assert valid_groups == {1, 2}  # each folder's 2nd and 3rd file: f1_arpeggios_belt_e, m9, f4_scales, ...
    assert by_split["train"] & by_split["valid"] == {"female1", "female4"}  # ... so valid is not singer-disjoint

    singer = vocalset.load_singer(tree, get_task("vocalset_singer"))
    assert len(singer) == 18
    for e in singer:
        group = next(c.file_id for c in items if c.path == e.path)
        want = "test" if group in test_groups else "valid" if group in singer_valid_groups else "train"
        assert e.split == want and vocalset.SINGERS[e.target] == e.path.parts[-4]
    assert sorted((e.path.parts[-2], e.path.parts[-4]) for e in singer if e.split == "test") == [
        ("belt", "female2"), ("lip_trill", "male2"), ("straight", "male11")]  # group 2 of every folder


def test_chunks_are_read_alone_and_standardised_on_their_own(tree: Path) -> None:
    path = tree / "FULL" / "male1" / "scales" / "belt" / "m1_scales_belt_a.wav"
    wave = sf.read(str(path), dtype="float32")[0]
    wave[259890:] *= 10  # the second chunk 20 dB louder
    sf.write(str(path), wave, SR, subtype="FLOAT")
    for start, stop in [(127890, 259890), (259890, 391890)]:
        x = F.read_segment(path, start, stop, normalize=False)
        assert len(x) == 47891  # 132000 frames at 44.1 kHz -> 16 kHz
        assert abs(float(x.mean())) < 0.01 and float(x.std()) == pytest.approx(1.0, rel=0.02)
    whole = F.read_audio(path, normalize=True)  # whole-file normalisation would leave them 10x apart
    assert whole[int(3.5 * 16000):int(5.5 * 16000)].std() < 0.2 * whole[int(6.5 * 16000):int(8.5 * 16000)].std()
    a, b = [(path, 127890, 259890)], [(path, 259890, 391890)]
    key = F.cache_key("h", "vocalset_singer", [path], 30.0, True)
    assert len({key, F.cache_key("h", "vocalset_singer", [path], 30.0, True, None, [s[1:] for s in a]),
                F.cache_key("h", "vocalset_singer", [path], 30.0, True, None, [s[1:] for s in b])}) == 3
    assert F.cache_key("h", "vocalset_singer", [path], 30.0, True, None, [None]) == key


def test_trim_index_is_reused_until_a_file_changes(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = vocalset.chunks(tree)
    trimmed: list[str] = []
    real = vocalset._trim

    def spy(path: Path) -> tuple[int, int, int | None]:
        trimmed.append(path.name)
        return real(path)

    monkeypatch.setattr(vocalset, "_trim", spy)
    assert vocalset.chunks(tree) == first and trimmed == []
    path = tree / "FULL" / "female3" / "scales" / "lip_trill" / "f3_scales_lip_trill.wav"
    wav(path, voice(6.0, silence=3.0))
    again = vocalset.chunks(tree)
    assert trimmed == ["f3_scales_lip_trill.wav"]
    assert [(c.start, c.stop) for c in again if c.path == path] == [(127890, 259890), (259890, 391890)]


def test_extract_reads_each_segment_as_its_own_clip(tree: Path) -> None:
    path = tree / "FULL" / "male1" / "scales" / "belt" / "m1_scales_belt_a.wav"
    torch.manual_seed(0)
    enc = SSLEncoder(tiny().encoder)
    segments = [(127890, 259890), (259890, 391890)]
    feats = F.extract(enc, [path, path], 30.0, False, torch.device("cpu"), segments=segments)  # type: ignore[arg-type]
    assert feats.clip.tolist() == [0, 1]  # one 30 s window per 2.99 s chunk
    alone = F.extract(enc, [path], 30.0, False, torch.device("cpu"), segments=[segments[1]])
    assert np.allclose(feats.x[1], alone.x[0], atol=1e-5)
    whole = F.extract(enc, [path], 30.0, False, torch.device("cpu"))
    assert whole.clip.tolist() == [0] and not np.allclose(whole.x[0], feats.x[0], atol=1e-3)


def test_an_unreadable_recording_is_reported_and_skipped(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = vocalset.load_technique(tree, get_task("vocalset_technique"))
    bad = tree / "FULL" / "male1" / "scales" / "belt" / "m1_scales_belt_b.wav"
    bad.write_bytes(b"RIFF not audio")
    after = vocalset.load_technique(tree, get_task("vocalset_technique"))
    assert sorted((e.path, e.start) for e in after) == sorted((e.path, e.start) for e in before)
    assert f"{bad}: unreadable recording skipped" in caplog.text
