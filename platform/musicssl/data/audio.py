"""Audio files in and out: decode any format soundfile reads to 16 kHz float32 mono, write 16-bit WAV.

Every failure (missing file, undecodable bytes, no samples, NaN or inf) raises `AudioError`, whose message
names the file and the reason, so a data loader can log it and skip the item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# soundfile and soxr are imported where a file is read or written: the training step (and the GPU check, on a
# machine without them) imports this module for its constants only

SAMPLE_RATE = 16000
"""The rate every model in musicssl consumes (Hz)."""

LAYER_NORM_EPS = 1e-5
"""Epsilon of the whole-utterance normalisation (that of `torch.nn.functional.layer_norm`)."""


class AudioError(ValueError):
    """An audio file could not be used; `path` and `reason` are kept as attributes."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[AudioError], tuple[str, str]]:
        return AudioError, (self.path, self.reason)  # survives pickling (Ray, multiprocessing)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, normalize: bool = False) -> np.ndarray:
    """Decode an audio file to a 1-D float32 mono waveform at `sample_rate`.

    Channels are mixed to mono by their mean; a file at another rate is resampled with soxr (HQ).

    Args:
        path: Any file soundfile decodes (WAV, FLAC, OGG, MP3 with libsndfile >= 1.1).
        sample_rate: Target rate in Hz.
        normalize: Zero mean and unit variance over the whole utterance, as
            `torch.nn.functional.layer_norm(wav, wav.shape)` with eps 1e-5 (data2vec's `normalize`).

    Returns:
        The waveform, shape (T,), dtype float32.

    Raises:
        AudioError: The file is missing, undecodable, has no samples, or holds NaN / inf.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise AudioError(path, "the file is empty (0 bytes); re-create or remove it")
    import soundfile as sf

    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        raise AudioError(path, f"cannot decode: {reason}; is it a complete audio file?") from exc
    if data.size == 0:
        raise AudioError(path, "the file holds no samples")
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise AudioError(path, f"{int((~np.isfinite(wav)).sum())} samples are NaN or inf")
    if file_rate != sample_rate:
        import soxr

        wav = soxr.resample(wav, file_rate, sample_rate, quality="HQ")
        if wav.size == 0:
            raise AudioError(path, f"too short to resample from {file_rate} Hz to {sample_rate} Hz")
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    return layer_norm(wav) if normalize else wav


def layer_norm(wav: np.ndarray, eps: float = LAYER_NORM_EPS) -> np.ndarray:
    """`(wav - mean) / sqrt(var + eps)` over the whole array (biased variance), as float32."""
    x = wav.astype(np.float64)
    mean = x.mean()
    var = np.mean((x - mean) ** 2)
    return ((x - mean) / np.sqrt(var + eps)).astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write `audio` as a 16-bit PCM WAV file, creating parent folders.

    Args:
        path: Destination file.
        audio: Samples in [-1, 1], shape (T,) or (T, C); values outside are clipped.
        sample_rate: Rate in Hz.

    Returns:
        The path written.

    Raises:
        AudioError: `audio` has the wrong rank, no samples, or NaN / inf values.
    """
    path = Path(path)
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2) or audio.size == 0:
        raise AudioError(
            path, f"cannot write audio of shape {audio.shape}; expected (T,) or (T, C) with T > 0"
        )
    if not np.isfinite(audio).all():
        raise AudioError(path, "refusing to write NaN or inf samples")
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return path
