"""The benchmark commands run and report consistent numbers (they are not timed pass/fail tests)."""

from __future__ import annotations

import re

import pytest

from musicssl.bench import bench_extract, bench_model, paired_ratio, train_flops_per_frame
from musicssl.config import music2vec_base, tiny


def test_bench_model_reports_both_sides() -> None:
    r = bench_model("tiny", batch=1, seconds=1.0, steps=1, warmup=1, device="cpu", threads=1)
    assert r["frames_per_step"] == 49 and r["ratio"] > 0
    assert r["musicssl_frames_per_s"] > 0 and r["transformers_frames_per_s"] > 0
    # one round: the paired ratio is the ratio of the two steps, with no spread
    assert r["rounds"] == 1 and r["ratio_range"] == (r["ratio"], r["ratio"])
    assert r["ratio"] == pytest.approx(r["musicssl_frames_per_s"] / r["transformers_frames_per_s"])
    # the CPU roofline: achieved GFLOP/s from the FLOP estimate, and the bound any implementation meets
    assert r["precision"] == "fp32" and r["matmul_gflops"] > 0
    flops = train_flops_per_frame(tiny()) * 49
    assert r["gflops_per_s"]["ours"] == pytest.approx(flops * r["musicssl_frames_per_s"] / 49 / 1e9)
    assert r["bound_ratio"] == pytest.approx(r["matmul_gflops"] / r["gflops_per_s"]["transformers"])


def test_bench_model_runs_both_sides_in_bf16_when_asked_and_refuses_an_unknown_precision() -> None:
    r = bench_model("tiny", batch=1, seconds=1.0, steps=1, warmup=0, device="cpu", threads=1, precision="bf16")
    assert r["precision"] == "bf16" and r["musicssl_frames_per_s"] > 0 and r["bound_ratio"] > 0
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16, not 'fp16'"):
        bench_model("tiny", batch=1, seconds=1.0, steps=1, warmup=0, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="steps .timed rounds. must be at least 1, not 0"):
        bench_model("tiny", batch=1, seconds=1.0, steps=0, warmup=0, device="cpu")


def test_bench_model_compiled_reports_the_compiled_step_and_its_compile_time() -> None:
    r = bench_model("tiny", batch=1, seconds=1.0, steps=1, warmup=1, device="cpu", threads=1, compile=True)
    assert r["compiled_frames_per_s"] > 0 and r["compiled_objective_frames_per_s"] > 0
    assert r["compile_s"] > 0 and r["objective_compile_s"] > 0
    assert r["compiled_ratio"] == pytest.approx(r["compiled_frames_per_s"] / r["transformers_frames_per_s"])
    assert r["compiled_ratio_range"] == (r["compiled_ratio"], r["compiled_ratio"])


def test_paired_ratio_takes_the_median_of_per_round_speed_ups_and_their_range() -> None:
    # the machine's speed drifts between rounds: paired by round the candidate is 2x in two rounds of three,
    # where the ratio of the medians (2.0 / 1.5) would mix rounds and read 1.33
    assert paired_ratio([1.0, 3.0, 2.0], [0.5, 1.5, 2.0]) == (2.0, (1.0, 2.0))
    assert paired_ratio([2.0, 4.0, 3.0], [1.0, 2.0, 1.5]) == (2.0, (2.0, 2.0))
    median, (lo, hi) = paired_ratio([1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 0.8, 2.0])
    assert median == pytest.approx((1.25 + 1.0) / 2) and (lo, hi) == (0.5, 2.0)
    with pytest.raises(ValueError):  # unpaired lists are a caller's bug
        paired_ratio([1.0, 2.0], [1.0])


def test_bench_extract_counts_windows() -> None:
    r = bench_extract("tiny", clips=2, clip_seconds=5.0, window_seconds=2.0, device="cpu", threads=1)
    assert (r["windows"], r["states"], r["audio_s"]) == (6, 5, 10.0)  # 2 clips x (2 s + 2 s + 1 s windows)


def test_flops_estimate_of_the_base_model() -> None:
    # 95M encoder: ~2 x params multiply-adds per frame forward (transformer dominated), x3 for backward
    flops = train_flops_per_frame(music2vec_base())
    assert 4.0e8 < flops < 1.5e9, flops


def test_bench_data_times_each_worker_count_against_a_gpu_estimate() -> None:
    from musicssl.bench import bench_data

    r = bench_data("tiny", workers=(0, 2), batches=2, files=4, seconds=2.5)
    assert [row["workers"] for row in r["rows"]] == [0, 2]
    assert all(row["samples_per_s"] > 0 and row["batches_per_s"] > 0 for row in r["rows"])
    for row in r["rows"]:  # every batch is the 4 files cropped to 2.5 s
        assert row["samples_per_s"] == pytest.approx(row["batches_per_s"] * 4 * 40000)
    need = r["gpu_need"]
    assert need["100%"] == pytest.approx(need["50%"] * 2) and need["30%"] > 0


def test_bench_model_command_prints_paired_ratios_with_their_range(capsys: pytest.CaptureFixture[str]) -> None:
    from musicssl.cli import main

    assert main(["bench", "model", "--preset", "tiny", "--batch", "1", "--seconds", "1", "--steps", "2",
                 "--warmup", "0", "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    ratio = re.search(r"ratio (\d+\.\d\d) \[(\d+\.\d\d)-(\d+\.\d\d)\] \(per-round range over 2 rounds\)", out)
    assert ratio, out
    r, lo, hi = (float(g) for g in ratio.groups())
    assert 0 < lo <= r <= hi
