"""The signal side of the beat probe (`probe/beat.py`), as MARBLE v1's `GTZANBT` code has it: smoothed frame
targets for training, madmom's DBN beat tracker for decoding activations into beat times (through madmom-infer),
and the F-measure within `TOLERANCE`, counted over the dataset (`mir_eval.util.match_events`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

TOLERANCE = 0.07
"""F-measure window in seconds: MARBLE's code (`f_measure_threshold=0.07`, mir_eval's default); the MARBLE
paper's text says 20 ms."""


def beat_targets(beat_times: np.ndarray | Sequence[float], num_frames: int, fps: float = 50) -> np.ndarray:
    """MARBLE's smoothed training targets: 1 at each beat frame, 0.95 one frame away and 0.5 two frames away.

    Beat frames are `round(t * fps)` (those outside [0, num_frames) are dropped). As in MARBLE, only beats
    with a beat before them get the smoothing before them, and only beats with a beat after them the smoothing
    after them (the first beat has no left shoulder, the last none on the right); values are written in
    MARBLE's order (beat, left 0.95, left 0.5, right 0.95, right 0.5), later ones overwriting earlier ones,
    which matters only for beats under 5 frames apart.

    Returns:
        (num_frames,) float32.
    """
    y = np.zeros(num_frames, dtype=np.float32)
    idx = np.round(np.asarray(beat_times, dtype=np.float64) * fps).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < num_frames)]
    y[idx] = 1.0
    for frames, value in ((idx[1:] - 1, 0.95), (idx[1:] - 2, 0.5), (idx[:-1] + 1, 0.95), (idx[:-1] + 2, 0.5)):
        y[frames[(frames >= 0) & (frames < num_frames)]] = value
    return y


class _BeatObservations:
    """madmom's `RNNBeatTrackingObservationModel`: the first 1/observation_lambda of each beat period are beat
    states (density = activation), the rest non-beat states (density = (1 - activation) / (lambda - 1)).

    Written here because madmom-infer 0.2.0's `log_densities` calls `np.asarray(..., ndmin=1)`, which numpy
    >= 2 rejects; `HiddenMarkovModel.viterbi` reads only `pointers` and `log_densities`.
    """

    def __init__(self, state_positions: np.ndarray, observation_lambda: float) -> None:
        self.observation_lambda = observation_lambda
        self.pointers = (state_positions < 1.0 / observation_lambda).astype(np.uint32)  # 1 = beat state

    def log_densities(self, observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float64)
        with np.errstate(divide="ignore"):  # activations of exactly 0 or 1 give -inf, as in madmom
            return np.stack(
                [np.log((1.0 - obs) / (self.observation_lambda - 1)), np.log(obs)], axis=1
            )  # (N, 2)


@functools.lru_cache(maxsize=8)
def _beat_hmm(
    fps: float,
    min_bpm: float,
    max_bpm: float,
    num_tempi: int | None,
    transition_lambda: float,
    observation_lambda: float,
) -> tuple[Any, _BeatObservations, Any]:
    """The DBN of `DBNBeatTrackingProcessor`: bar-pointer beat state space, exponential tempo transitions."""
    from madmom_infer.features.beats_hmm import BeatStateSpace, BeatTransitionModel
    from madmom_infer.ml.hmm import HiddenMarkovModel

    space = BeatStateSpace(60.0 * fps / max_bpm, 60.0 * fps / min_bpm, num_tempi)
    observations = _BeatObservations(space.state_positions, observation_lambda)
    return space, observations, HiddenMarkovModel(BeatTransitionModel(space, transition_lambda), observations)


def decode_beats(
    activation: np.ndarray,
    fps: float = 50,
    *,
    min_bpm: float = 55.0,
    max_bpm: float = 215.0,
    num_tempi: int | None = None,
    transition_lambda: float = 100.0,
    observation_lambda: float = 16.0,
    threshold: float = 0.0,
    correct: bool = True,
) -> np.ndarray:
    """Beat times (seconds) from a frame-wise beat activation, as madmom's `DBNBeatTrackingProcessor(fps=fps)`.

    The defaults are madmom's. Viterbi decoding through madmom-infer's beat state space and transition model;
    with `correct`, each beat is the activation peak inside a run of beat states, otherwise the frame where the
    beat position wraps. An all-zero activation (or none above `threshold`) gives no beats.

    Args:
        activation: (T,) beat probabilities in [0, 1].
        fps: Frames per second of `activation`.

    Returns:
        (num_beats,) float64, sorted.
    """
    act = np.asarray(activation, dtype=np.float64).ravel()
    first = 0
    if threshold:
        above = np.flatnonzero(act >= threshold)
        first, last = (int(above[0]), int(above[-1]) + 1) if above.size else (0, 0)
        act = act[first:last]
    if not act.any():
        return np.empty(0)
    space, observations, hmm = _beat_hmm(
        float(fps),
        float(min_bpm),
        float(max_bpm),
        num_tempi,
        float(transition_lambda),
        float(observation_lambda),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # -inf log probability: an empty path, no beats
        path, _ = hmm.viterbi(act)
    if path.size == 0:
        return np.empty(0)
    if correct:
        in_beat = observations.pointers[path].astype(np.int64)  # (T,) 1 inside a beat state run
        edges = np.flatnonzero(np.diff(in_beat)) + 1
        edges = np.r_[[0] if in_beat[0] else [], edges, [in_beat.size] if in_beat[-1] else []].astype(
            np.int64
        )
        beats = np.array(
            [left + int(np.argmax(act[left:right])) for left, right in edges.reshape(-1, 2)], dtype=np.int64
        )
    else:
        from scipy.signal import argrelmin

        beats = argrelmin(space.state_positions[path], mode="wrap")[0]
        beats = beats[observations.pointers[path[beats]] == 1]
    return (beats + first) / float(fps)


def beat_f_measure(
    references: Sequence[np.ndarray], estimates: Sequence[np.ndarray], tolerance: float = TOLERANCE
) -> dict[str, float]:
    """Beat F-measure over a dataset, MARBLE's way, plus the per-track mean for comparison.

    `beat_f` comes from the matched / estimated / reference counts summed over all tracks, each track matched
    with `mir_eval.util.match_events` within `tolerance` seconds (0 when there are no estimates or no
    references at all); `beat_f_track_mean` is the mean over tracks of `mir_eval.beat.f_measure`, the usual
    per-track average. The tolerance is 0.07 s in MARBLE's code (`GTZANBT_metric.py`), while the MARBLE paper's
    text says 20 ms; 0.07 s is the default here and mir_eval's.

    Returns:
        `beat_f`, `beat_precision`, `beat_recall` (dataset counts) and `beat_f_track_mean`.
    """
    import mir_eval  # a dev dependency of the package; this probe needs it at run time

    matched = n_est = n_ref = 0
    per_track = []
    for ref, est in zip(references, estimates, strict=True):
        ref, est = np.asarray(ref, dtype=np.float64), np.asarray(est, dtype=np.float64)
        matched += len(mir_eval.util.match_events(ref, est, tolerance))
        n_est, n_ref = n_est + len(est), n_ref + len(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # mir_eval warns on empty beat lists, then scores 0
            per_track.append(mir_eval.beat.f_measure(ref, est, f_measure_threshold=tolerance))
    precision = matched / n_est if n_est else 0.0
    recall = matched / n_ref if n_ref else 0.0
    f = 2 * precision * recall / (precision + recall) if n_est and n_ref and matched else 0.0
    return {
        "beat_f": float(f),
        "beat_precision": float(precision),
        "beat_recall": float(recall),
        "beat_f_track_mean": float(np.mean(per_track)) if per_track else 0.0,
    }
