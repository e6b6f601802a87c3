"""The synthetic corpus: determinism, caching, layout, balanced splits, and labels that match the audio."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from musicssl.config import SyntheticCorpusConfig
from musicssl.data import corpus as C
from musicssl.data import synth as S
from musicssl.data.audio import SAMPLE_RATE, read_audio
from musicssl.data.manifest import read_manifest

SMALL = SyntheticCorpusConfig(seed=3, num_pieces=2, piece_seconds=1.0, probe_clips=12, clip_seconds=0.5)
KK_MAJOR = np.array(
    [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]
)  # Krumhansl-Kessler
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _clips(task: str, count: int, seconds: float, seed: int = 0) -> list[tuple[np.ndarray, object]]:
    return [C.PROBE_TASKS[task](C.item_rng(seed, task, i), i, seconds) for i in range(count)]


def _spectrum(x: np.ndarray, window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE), np.abs(
        np.fft.rfft(x * np.hanning(len(x)) if window else x)
    )


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return C.generate_corpus(SMALL, tmp_path_factory.mktemp("corpus"))


def test_same_seed_is_byte_identical_and_another_seed_differs(small_corpus, tmp_path):
    first = _hashes(small_corpus)
    again = C.generate_corpus(SMALL, tmp_path)  # another root: only the manifest's root line may differ
    second = _hashes(again)
    assert first.keys() == second.keys()
    assert {k for k in first if first[k] != second[k]} == {"pretrain/train.tsv"}
    shutil.rmtree(again)
    assert _hashes(C.generate_corpus(SMALL, tmp_path)) == second  # regenerated in place: identical
    other = _hashes(C.generate_corpus(SMALL.model_copy(update={"seed": 4}), tmp_path))
    wavs = [k for k in first if k.endswith(".wav")]
    assert len(wavs) == 2 + 12 * len(C.PROBE_TASKS) and all(other[k] != second[k] for k in wavs)


def test_layout_manifest_and_levels(small_corpus):
    assert (small_corpus / "DONE").is_file() and small_corpus.name == C.corpus_dir(
        SMALL, small_corpus.parent
    ).name
    manifest = read_manifest(small_corpus / "pretrain" / "train.tsv")
    assert manifest.root == small_corpus / "pretrain" and manifest.paths == [
        "piece_00000.wav",
        "piece_00001.wav",
    ]
    assert manifest.sizes.tolist() == [SAMPLE_RATE] * 2
    for i in range(len(manifest)):
        wav = read_audio(manifest.path(i))
        assert len(wav) == manifest.sizes[i] and abs(np.abs(wav).max() - 0.9) < 1e-3
    for task in C.PROBE_TASKS:
        rows = C.load_labels(C.probe_task_dir(small_corpus, task))
        assert [r["path"] for r in rows] == [f"audio/{task}_{i:05d}.wav" for i in range(12)]
        assert len(read_audio(C.probe_task_dir(small_corpus, task) / rows[0]["path"])) == SAMPLE_RATE // 2
    assert not [p for p in small_corpus.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_cache_hit_and_foreign_folder(small_corpus, tmp_path):
    marker = small_corpus / "pretrain" / "piece_00000.wav"
    before = marker.stat().st_mtime_ns
    assert (
        C.generate_corpus(SMALL, small_corpus.parent) == small_corpus and marker.stat().st_mtime_ns == before
    )
    C.corpus_dir(SMALL, tmp_path).mkdir()
    with pytest.raises(FileExistsError, match="no DONE marker"):
        C.generate_corpus(SMALL, tmp_path)


def test_kill_during_generation_leaves_a_temp_folder_the_next_start_removes(tmp_path):
    """SIGKILL mid-write skips `finally`: the next start removes that dead writer's temp folder (this host's,
    its process gone) and leaves a live writer's alone."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    cfg = SyntheticCorpusConfig(seed=5, num_pieces=64, piece_seconds=4.0, probe_clips=12, clip_seconds=0.5)
    code = ("import sys; from musicssl.config import SyntheticCorpusConfig as S; from musicssl.data.corpus import "
            f"generate_corpus; generate_corpus(S(**{cfg.model_dump()!r}), sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    final = C.corpus_dir(cfg, tmp_path)
    deadline = time.time() + 120
    while not list(tmp_path.glob(f".{final.name}.tmp-*")) and time.time() < deadline:
        assert proc.poll() is None, "the writer ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (left,) = tmp_path.glob(f".{final.name}.tmp-*")
    assert f"-{proc.pid}-" in left.name and not final.exists()
    live = tmp_path / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-abcdef12"  # a live writer (us)
    live.mkdir()
    assert C.generate_corpus(cfg, tmp_path) == final and (final / "DONE").is_file()
    assert not left.exists() and live.exists()


def test_registry_and_label_files(small_corpus, tmp_path):
    assert list(C.PROBE_TASKS) == [
        "synth_pitch",
        "synth_key",
        "synth_instrument",
        "synth_tags",
        "synth_beat",
        "synth_tempo",
    ]
    with pytest.raises(
        ValueError, match="unknown synthetic probe task 'synth_pich'; known: synth_pitch, synth_key"
    ):
        C.probe_task_dir(small_corpus, "synth_pich")
    (tmp_path / "labels.jsonl").write_text(
        '{"path": "a.wav", "split": "train", "label": 1}\n{"path": "b.wav"}\n'
    )
    with pytest.raises(ValueError, match=r"labels.jsonl: line 2: expected an object"):
        C.load_labels(tmp_path)


def test_key_labels_cover_24_keys_with_stratified_splits():
    labels = [C.synth_key(C.item_rng(0, "synth_key", i), i, 0.3)[1] for i in range(240)]
    assert (
        Counter(labels) == {key: 10 for key in S.KEY_NAMES} and "F# major" in labels and "A# minor" in labels
    )
    splits = C.assign_splits(labels)
    assert Counter(splits) == {"train": 168, "valid": 36, "test": 36}
    for key in S.KEY_NAMES:
        counts = Counter(s for s, k in zip(splits, labels, strict=True) if k == key)
        assert counts["train"] == 7 and counts["valid"] + counts["test"] == 3 and min(counts.values()) >= 1
    assert Counter(C.assign_splits([0.5] * 20)) == {"train": 14, "valid": 3, "test": 3}


def test_pitch_clip_strongest_low_partial_is_the_labelled_pitch_class():
    clips = _clips("synth_pitch", 48, 1.0)
    assert [label for _, label in clips] == [i % 12 for i in range(48)]
    for audio, label in clips:
        freqs, mag = _spectrum(audio)
        band = (freqs > 100) & (freqs < 1100)  # MIDI 48..83 fundamentals are 131..988 Hz
        peak = freqs[band][np.argmax(mag[band])]
        assert round(69 + 12 * np.log2(peak / 440)) % 12 == label


def test_key_clip_chroma_matches_its_key_profile():
    profiles = np.array([np.roll(KK_MAJOR, t) for t in range(12)] + [np.roll(KK_MINOR, t) for t in range(12)])
    hits, shifted = 0, 0
    for audio, label in _clips("synth_key", 96, 2.0):
        freqs, mag = _spectrum(audio, window=False)  # the whole clip counts evenly
        band = (freqs > 60) & (freqs < 2000)
        chroma = np.bincount(np.round(69 + 12 * np.log2(freqs[band] / 440)).astype(int) % 12, mag[band], 12)
        best = int(np.argmax([np.corrcoef(chroma, p)[0, 1] for p in profiles]))
        hits += S.KEY_NAMES[best] == label
        shifted += S.KEY_NAMES[(best + 1) % 12 + 12 * (best >= 12)] == label
    assert hits / 96 >= 0.8 and shifted / 96 < 0.1


def _jump(x: np.ndarray, t: float, width: int = 400) -> float | None:
    """RMS in the 25 ms after `t` over the 25 ms before (None near the edges)."""
    i = round(t * SAMPLE_RATE)
    if i < width or i + width > len(x):
        return None
    return float(np.sqrt(np.mean(x[i : i + width] ** 2)) / (np.sqrt(np.mean(x[i - width : i] ** 2)) + 1e-9))


def test_beat_times_are_drum_onsets():
    on, off = [], []
    for audio, times in _clips("synth_beat", 40, 2.0):
        assert times == sorted(times) and all(0 <= t < 2.0 for t in times) and len(times) >= 2
        gaps = np.diff(times)
        assert 60 / gaps.mean() == pytest.approx(np.clip(60 / gaps.mean(), *S.TEMPO_RANGE), abs=0.1)
        assert np.ptp(gaps) < 2e-4  # evenly spaced: one tempo per clip
        on += [_jump(audio, t) for t in times]
        off += [_jump(audio, t + gaps.mean() * s) for t in times for s in (0.25, -0.25, 0.5)]
    on_ok, off_ok = [j for j in on if j is not None], [j for j in off if j is not None]
    assert min(on_ok) > 4 and np.mean(np.array(off_ok) > 4) < 0.1


def test_tempo_label_is_the_onset_period():
    agree = 0
    for audio, tempo in _clips("synth_tempo", 30, 4.0):
        assert S.TEMPO_RANGE[0] <= tempo <= S.TEMPO_RANGE[1] and tempo == round(tempo, 2)
        hop = 80
        energy = np.log(np.sum(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1) + 1e-8)
        onset = np.maximum(np.diff(energy), 0)
        onset -= onset.mean()
        acf = np.correlate(onset, onset, "full")[len(onset) - 1 :]
        lag = 60 / tempo * SAMPLE_RATE / hop
        at = np.interp([lag, lag * 0.8, lag * 1.25, lag * 1.5], np.arange(len(acf)), acf)
        agree += at[0] > at[1:].max()
    assert agree / 30 >= 0.8


def test_tags_and_instrument_labels():
    drums = S.TAG_NAMES.index("drums")
    for audio, tags in _clips("synth_tags", 60, 1.0):
        assert tags == sorted(set(tags)) and 1 <= len([t for t in tags if t != drums]) <= 3
        freqs, mag = _spectrum(audio)
        power = mag**2
        band = power[(freqs > 5000) & (freqs < 7500)]
        noisy = np.median(band) / band.mean() > 0.1 and band.sum() / power.sum() > 1e-3  # hi-hat noise
        assert noisy == (drums in tags)
    assert [label for _, label in _clips("synth_instrument", 12, 0.5)] == [
        i % len(S.TIMBRES) for i in range(12)
    ]


def test_timbres_differ_in_harmonic_spectrum():
    def harmonic_levels(name: str) -> np.ndarray:
        timbre = S.TIMBRES[S.TIMBRE_NAMES.index(name)]
        steady = S.render_note(timbre, 57, 1.0)[4800:12800]  # 0.3..0.8 s of A3: 110 periods of 220 Hz
        freqs, mag = _spectrum(steady, window=False)
        return np.array([mag[np.argmin(np.abs(freqs - 220 * k))] for k in (1, 2, 3, 4)]) / mag.max()

    assert S.midi_to_hz(69) == 440.0 and S.midi_to_hz(60) == pytest.approx(261.626, abs=1e-3)
    string, clarinet = harmonic_levels("string"), harmonic_levels("clarinet")
    np.testing.assert_allclose(string, [1, 1 / 2, 1 / 3, 1 / 4], atol=0.03)  # sawtooth: 1/n
    assert clarinet[1] < 0.01 and clarinet[3] < 0.01 and clarinet[2] == pytest.approx(1 / 3, abs=0.03)
    pluck = S.render_note(S.TIMBRES[S.TIMBRE_NAMES.index("pluck")], 57, 1.0)
    assert np.abs(pluck[-1600:]).max() < 0.05 * np.abs(pluck).max()  # fast exponential decay
