"""Label pipeline: fairseq file formats, bad audio skipped and reported, resumption, label checks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from musicssl.data.audio import read_audio, write_wav
from musicssl.data.feature_shards import FeatureShard, dump_features
from musicssl.data.kmeans import assign, load_centroids
from musicssl.data.labels import (
    LabelError,
    check_labels,
    dump_labels,
    learn_kmeans,
    read_labels,
)
from musicssl.data.manifest import read_manifest, write_manifest

HOP = 160  # 100 frames per second at 16 kHz, as MFCC


def featurize(wav: np.ndarray) -> np.ndarray:
    """(T, 3) frames at 100 Hz: mean, log-energy and zero-crossing count of each 10 ms hop."""
    frames = wav[: wav.size // HOP * HOP].reshape(-1, HOP)  # (T, 160)
    crossings = (np.diff(np.sign(frames), axis=1) != 0).sum(1)
    return np.stack([frames.mean(1), np.log(1e-6 + (frames**2).mean(1)), crossings / 10.0], axis=1)


def _corpus(root: Path, bad: bool = False) -> Path:
    """Seven clips of 0.3 to 0.9 s (tones and noise); with `bad`, a corrupt file as row 2."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(7):
        n = int(16000 * (0.3 + 0.1 * i))
        t = np.arange(n) / 16000
        wav = 0.5 * np.sin(2 * np.pi * 200 * (i + 1) * t) if i % 2 else rng.uniform(-0.4, 0.4, n)
        write_wav(root / "audio" / f"clip{i}.wav", wav)
        entries.append((f"clip{i}.wav", n))
        if bad and i == 1:
            (root / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(64))
            entries.append(("broken.wav", 16000))
    return write_manifest(root / ("bad.tsv" if bad else "train.tsv"), root / "audio", entries)


def _pipeline(tmp_path: Path, manifest: Path, nshard: int = 1, k: int = 4) -> tuple[list[FeatureShard], Path]:
    shards = [
        dump_features(manifest, featurize, tmp_path / "feat", "train", nshard=nshard, rank=r)
        for r in range(nshard)
    ]
    learn_kmeans(shards, k, tmp_path / "km" / "centroids.npy", seed=0, device="cpu")
    km = dump_labels(shards, tmp_path / "km" / "centroids.npy", tmp_path / "lab", "train", device="cpu")
    return shards, km


def test_features_labels_and_dictionary_round_trip(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path)
    shards, km = _pipeline(tmp_path, manifest)
    m = read_manifest(manifest)
    shard = shards[0]
    lengths = shard.lengths()
    assert shard.feats.name == "train_0_1.npy" and shard.lengths_path.name == "train_0_1.len"
    assert lengths.tolist() == [int(s) // HOP for s in m.sizes]
    feats = np.load(shard.feats)
    assert feats.dtype == np.float32 and feats.shape == (lengths.sum(), 3)
    np.testing.assert_allclose(feats[: lengths[0]], featurize(read_audio(m.path(0))), rtol=1e-6)
    assert shard.failed_path.read_text() == ""
    assert (tmp_path / "lab" / "dict.km.txt").read_text() == "0 1\n1 1\n2 1\n3 1\n"
    labels = read_labels(km, tmp_path / "lab" / "dict.km.txt")
    want = assign(feats, load_centroids(tmp_path / "km" / "centroids.npy"), device="cpu")
    assert len(labels) == len(m) and [lab.size for lab in labels] == lengths.tolist()
    np.testing.assert_array_equal(np.concatenate(labels), want)
    assert km.read_text().splitlines()[0] == " ".join(str(v) for v in want[: lengths[0]])
    assert labels.dictionary == ["0", "1", "2", "3"] and len(np.unique(want)) == 4
    check_labels(labels, manifest, label_rate=100)  # consistent: no error


def test_two_shards_give_the_same_labels_as_one(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path)
    _, km1 = _pipeline(tmp_path / "one", manifest)
    shards, km2 = _pipeline(tmp_path / "two", manifest, nshard=2)
    assert [s.rows for s in shards] == [(0, 4), (4, 7)]  # fairseq's round(N / nshard * rank) split
    assert shards[1].feats.name == "train_1_2.npy"
    # k-means sees the same frames (both shards, all utterances), so the labels agree exactly
    assert km1.read_text() == km2.read_text()
    with pytest.raises(ValueError, match="rows from 0 were expected"):
        dump_labels(shards[1:], tmp_path / "two" / "km" / "centroids.npy", tmp_path / "x", "train")


def test_percent_samples_whole_utterances(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path)
    shard = dump_features(manifest, featurize, tmp_path / "feat", "train")
    half = learn_kmeans([shard.feats], 3, tmp_path / "c.npy", percent=0.5, seed=1, device="cpu")
    lengths = shard.lengths()
    # ceil(7 * 0.5) = 4 whole utterances: the sample size is a sum of 4 distinct utterance lengths
    sums = {int(lengths[list(c)].sum()) for c in itertools.combinations(range(7), 4)}
    assert half.samples in sums and half.samples < lengths.sum()
    assert load_centroids(tmp_path / "c.npy").shape == (3, 3)


def test_corrupt_audio_is_reported_and_skipped(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, bad=True)
    good = _corpus(tmp_path / "good")
    with pytest.warns(UserWarning, match="1 unreadable audio file"):
        shard = dump_features(manifest, featurize, tmp_path / "feat", "train")
    row, path, reason = shard.failed_path.read_text().rstrip("\n").split("\t")
    assert (row, path) == ("2", "broken.wav") and "cannot decode" in reason
    lengths = shard.lengths()
    assert lengths.size == 8 and lengths[2] == 0
    clean = dump_features(good, featurize, tmp_path / "feat_good", "train")
    np.testing.assert_array_equal(np.load(shard.feats), np.load(clean.feats))  # the other rows are intact
    with pytest.warns(UserWarning, match="1 row"):
        km = dump_labels([shard], np.load(clean.feats)[:4].copy(), tmp_path / "lab", "train")
    assert km.read_text().split("\n")[2] == "" and len(km.read_text().splitlines()) == 8
    assert (tmp_path / "lab" / "train.failed.tsv").read_text().startswith("2\tbroken.wav\t")
    with pytest.raises(LabelError, match=r"rows 2 have no labels .*drop them from the manifest"):
        check_labels(read_labels(km, tmp_path / "lab" / "dict.km.txt"), manifest, label_rate=100)


class Interrupt(RuntimeError):
    pass


def test_interrupted_dump_resumes_to_identical_output(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path, bad=True)
    with pytest.warns(UserWarning):
        reference = dump_features(manifest, featurize, tmp_path / "straight", "train")
    calls: list[int] = []

    def flaky(wav: np.ndarray) -> np.ndarray:
        calls.append(wav.size)
        if len(calls) == 4:  # the 4th featurize call: row 4 (row 2 is corrupt and never featurized)
            raise Interrupt("killed")
        return featurize(wav)

    with pytest.raises(Interrupt):
        dump_features(manifest, flaky, tmp_path / "resumed", "train")
    stem = tmp_path / "resumed" / "train_0_1"
    assert not Path(f"{stem}.npy").exists() and Path(f"{stem}.len.partial").read_text().count("\n") == 4
    # simulate a kill in the middle of the next utterance: stray frame bytes and half a length line
    with open(f"{stem}.npy.partial", "ab") as f:
        f.write(b"\x01" * 20)
    with open(f"{stem}.len.partial", "a") as f:
        f.write("5")
    calls.clear()
    with pytest.warns(UserWarning):
        resumed = dump_features(manifest, featurize_counting(calls), tmp_path / "resumed", "train")
    assert len(calls) == 4  # rows 4..7 only
    for suffix in (".npy", ".len", ".failed.tsv", ".json"):
        assert (
            resumed.feats.with_suffix(suffix).read_bytes() == reference.feats.with_suffix(suffix).read_bytes()
        )
    calls.clear()
    again = dump_features(manifest, featurize_counting(calls), tmp_path / "resumed", "train")
    assert calls == [] and again == resumed  # a complete shard is not redone
    assert FeatureShard.open(tmp_path / "resumed", "train") == resumed


def featurize_counting(calls: list[int]):
    def run(wav: np.ndarray) -> np.ndarray:
        calls.append(wav.size)
        return featurize(wav)

    return run


def test_check_labels_catches_each_plumbing_bug(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path)
    _, km = _pipeline(tmp_path, manifest)
    lab_dir = tmp_path / "lab"
    dict_path = lab_dir / "dict.km.txt"
    lines = km.read_text().splitlines()

    short = lab_dir / "short.km"
    short.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(LabelError, match="6 label lines but 7 manifest rows"):
        check_labels(read_labels(short, dict_path), manifest, label_rate=100)

    empty = lab_dir / "empty.txt"
    empty.write_text("")
    with pytest.raises(
        LabelError, match=r"empty\.txt is empty: fairseq would map every label to <unk> \(PR #4521\)"
    ):
        check_labels(read_labels(km, empty), manifest, label_rate=100)

    with pytest.raises(LabelError, match="has 4 entries but the model expects 500 classes"):
        check_labels(read_labels(km, dict_path), manifest, label_rate=100, num_classes=500)

    out_of_range = lab_dir / "oor.km"
    out_of_range.write_text("\n".join([lines[0], "7 " + lines[1].split(" ", 1)[1], *lines[2:]]) + "\n")
    with pytest.raises(
        LabelError, match=r"rows 1 hold label ids outside the dictionary \[0, 4\) \(largest 7\)"
    ):
        check_labels(read_labels(out_of_range, dict_path), manifest, label_rate=100)

    with pytest.raises(
        LabelError, match=r"label_rate is probably wrong: 100 for MFCC, 50 for model features"
    ) as info:
        check_labels(read_labels(km, dict_path), manifest, label_rate=50)
    assert "about 100 per second" in str(info.value) and "rows 0, 1, 2, 3, 4, ... (7 rows)" in str(info.value)

    bad_syntax = lab_dir / "syntax.km"
    bad_syntax.write_text("1 2 x\n")
    with pytest.raises(LabelError, match="line 1: labels must be space-separated integers"):
        read_labels(bad_syntax, dict_path)


def test_nan_features_are_skipped_and_a_stale_shard_is_refused(tmp_path: Path) -> None:
    manifest = _corpus(tmp_path)
    sizes = read_manifest(manifest).sizes

    def nan_on_row_3(wav: np.ndarray) -> np.ndarray:
        out = featurize(wav)
        return out * np.nan if wav.size == sizes[3] else out

    with pytest.warns(UserWarning, match="1 unreadable"):
        shard = dump_features(manifest, nan_on_row_3, tmp_path / "feat", "train")
    assert (
        shard.failed_path.read_text().startswith("3\tclip3.wav\t")
        and "NaN or inf" in shard.failed_path.read_text()
    )
    assert shard.lengths()[3] == 0 and np.isfinite(np.load(shard.feats)).all()
    other = write_manifest(tmp_path / "other.tsv", tmp_path / "audio", [("clip0.wav", int(sizes[0]))])
    with pytest.raises(RuntimeError, match="dumped from another manifest"):
        dump_features(other, featurize, tmp_path / "feat", "train")
    with pytest.raises(FileNotFoundError, match="shard not complete"):
        FeatureShard.open(tmp_path / "feat", "valid")
