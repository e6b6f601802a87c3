"""`musicssl data manifest`: every file validated; bad ones reported with a reason and skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from musicssl.cli import main
from musicssl.data.manifest import read_manifest


def _tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)
    (root / "a").mkdir(parents=True)
    sf.write(root / "a" / "mono16k.wav", tone, 16000, subtype="PCM_16")
    sf.write(root / "a" / "stereo44k.flac", rng.uniform(-0.3, 0.3, (44100 * 3, 2)), 44100)
    sf.write(root / "b.wav", rng.uniform(-0.3, 0.3, 8000 * 3).astype(np.float32), 8000, subtype="PCM_U8")
    sf.write(root / "short.wav", tone[:16000], 16000)
    sf.write(root / "silent.wav", np.zeros(3 * 16000), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    (root / "empty.flac").write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    sf.write(root / "tab\there.wav", tone, 16000)  # a good file whose name a manifest line cannot hold
    sf.write(root / "line\nbreak.wav", tone, 16000)


def test_manifest_command(tmp_path: Path, capsys) -> None:
    _tree(tmp_path / "audio")
    out = tmp_path / "manifest"
    assert (
        main(
            [
                "data",
                "manifest",
                str(tmp_path / "audio"),
                "-o",
                str(out),
                "--valid-percent",
                "0",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    train = read_manifest(out / "train.tsv")
    assert train.root == (tmp_path / "audio").resolve()
    sizes = dict(zip(train.paths, train.sizes.tolist(), strict=True))
    assert sizes == {"a/mono16k.wav": 48000, "a/stereo44k.flac": 48000, "b.wav": 48000}  # all at 16 kHz
    rejected = dict(line.split("\t") for line in (out / "rejected.tsv").read_text().splitlines()[1:])
    assert set(rejected) == {"short.wav", "silent.wav", "corrupt.wav", "empty.flac", "tab\\there.wav",
                             "line\\nbreak.wav"}
    assert all("holds a tab or a line break" in rejected[k] for k in ("tab\\there.wav", "line\\nbreak.wav"))
    assert rejected["short.wav"].startswith("too short: 1.00 s")
    assert rejected["silent.wav"].startswith("silent")
    assert "cannot decode" in rejected["corrupt.wav"]
    assert "empty" in rejected["empty.flac"]
    assert read_manifest(out / "valid.tsv").paths == []
    printed = capsys.readouterr().out
    assert "3 train + 0 valid files" in printed and "6 files rejected" in printed


def test_valid_split_is_deterministic(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    root.mkdir()
    for i in range(40):
        sf.write(root / f"{i:02d}.wav", np.full(32000, 0.1 * (i % 3 + 1)) * np.sin(np.arange(32000)), 16000)
    from musicssl.data.scan import scan_to_manifest

    a = scan_to_manifest(root, tmp_path / "m1", valid_percent=0.25, workers=2)
    b = scan_to_manifest(root, tmp_path / "m2", valid_percent=0.25, workers=1)
    assert (
        a.num_train + a.num_valid == 40
        and 3 <= a.num_valid <= 18
        and (b.num_train, b.num_valid) == (a.num_train, a.num_valid)
    )
    assert (tmp_path / "m1" / "valid.tsv").read_text() == (tmp_path / "m2" / "valid.tsv").read_text()


def test_labels_command(tiny_corpus: Path, tmp_path: Path, capsys) -> None:
    manifest = tiny_corpus / "pretrain" / "train.tsv"
    assert main(["data", "labels", str(manifest), "-o", str(tmp_path), "--k", "8", "--fraction", "0.5"]) == 0
    km = Path(capsys.readouterr().out.split("labels: ")[1].split(" (")[0])
    lines = km.read_text().splitlines()
    assert len(lines) == len(read_manifest(manifest))
    assert {int(v) for line in lines for v in line.split()} <= set(range(8))
    assert (km.parent / "dict.km.txt").read_text().splitlines() == [f"{i} 1" for i in range(8)]
