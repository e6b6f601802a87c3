"""Logging-load benchmark of an MLflow tracking store: N processes log at once, then every value is read back.

Each process (multiprocessing, spawn) opens its own `MlflowClient`, creates its own run, and logs through
musicssl's own `MlflowSink` (one `log_batch` per `log` call, as a trial does) `rate` calls a second, each call
`keys` metrics at the next step, for `seconds` seconds. The calls are paced on a fixed schedule; a store that
cannot keep up shows as an achieved rate below the target, not as a longer run. Afterwards every key of every run
is read back with `get_metric_history` and compared with what was logged (step and value).

    python -m musicssl.tracking.loadbench --uri sqlite:////tmp/load.db --procs 8 --rate 10 --seconds 20
    python -m musicssl.tracking.loadbench --uri http://mlflow:5000 --procs 16 --rate 50 --seconds 20

Exit status 1 when a value was lost or a call failed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from musicssl.tracking.mlflow import MlflowSink, ensure_experiment, start_run

START_TIMEOUT_S = 300  # spawned processes import mlflow; on a loaded machine that takes a while


@dataclass
class LoadResult:
    """What one benchmark run logged, read back and measured (counts are metric values, not calls)."""

    uri: str
    procs: int
    rate: float  # target log calls per second per process
    keys: int  # metrics per call
    seconds: float
    attempted: int = 0  # values of the calls that were made
    logged: int = 0  # values of the calls that returned without error
    read_back: int = 0  # logged values found in the store, with their step and value
    lost: int = 0  # logged but not found
    extra: int = 0  # found but never logged successfully (repeats, or a failed call that did write)
    errors: int = 0  # calls (and run creations) that raised
    error_samples: list[str] = field(default_factory=list)
    achieved_rate: float = 0.0  # logged values per second, all processes together
    p50_ms: float = 0.0  # latency of one log call
    p95_ms: float = 0.0
    max_ms: float = 0.0

    def line(self) -> str:
        """One-line summary."""
        target = self.procs * self.rate * self.keys
        return (f"{self.procs:>3} procs x {self.rate:g} calls/s x {self.keys} keys, {self.seconds:g} s: "
                f"logged {self.logged}/{self.attempted}, read back {self.read_back}, lost {self.lost}, "
                f"extra {self.extra}, errors {self.errors}; {self.achieved_rate:.0f} of {target:g} values/s; "
                f"log call p50 {self.p50_ms:.1f} ms p95 {self.p95_ms:.1f} ms max {self.max_ms:.0f} ms")


def _value(proc: int, step: int, k: int) -> float:
    return proc * 1_000_000 + step + k / 8  # exact in float64, distinct per process, step and key


def _worker(uri: str, experiment_id: str, proc: int, rate: float, keys: int, seconds: float,
            barrier: Any, out: Any) -> None:
    """One logging process: create a run, wait for the others, log on schedule, report to `out`."""
    report: dict[str, Any] = {"proc": proc, "run_id": None, "steps": [], "attempted": 0, "latencies": [],
                              "errors": []}
    try:
        client = MlflowClient(uri)
        report["run_id"] = start_run(client, experiment_id, f"load-{proc}", {"musicssl.kind": "loadbench"})
        sink = MlflowSink(client, report["run_id"])
    except Exception as e:  # noqa: BLE001 - counted and shown, never hidden
        report["errors"].append(f"create run: {type(e).__name__}: {e}")
        sink = None
    try:
        barrier.wait(timeout=START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        report["errors"].append("start: another process failed before logging began")
        sink = None
    t0 = time.monotonic()
    step = 0
    while sink is not None:
        due = t0 + step / rate
        now = time.monotonic()
        if due >= t0 + seconds:
            break
        if due > now:
            time.sleep(due - now)
        elif now >= t0 + seconds:
            break
        report["attempted"] += 1
        start = time.perf_counter()
        try:
            sink.log({f"load/m{k}": _value(proc, step, k) for k in range(keys)}, step)
            report["steps"].append(step)
        except Exception as e:  # noqa: BLE001
            sink.buffer = []
            report["errors"].append(f"step {step}: {type(e).__name__}: {str(e)[:300]}")
        report["latencies"].append(time.perf_counter() - start)
        step += 1
    report["elapsed"] = time.monotonic() - t0
    out.put(report)


def run_load(uri: str, procs: int, rate: float, seconds: float, keys: int = 1,
             experiment: str = "musicssl-loadbench") -> LoadResult:
    """Run the benchmark against tracking store `uri` and check every logged value; see the module docstring."""
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, experiment)  # the store and its schema exist before the workers
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(uri, experiment_id, i, rate, keys, seconds, barrier, out))
               for i in range(procs)]
    for w in workers:
        w.start()
    reports = _collect(workers, out, deadline=time.monotonic() + START_TIMEOUT_S + seconds * 10 + 120)
    result = LoadResult(uri, procs, rate, keys, seconds)
    latencies: list[float] = []
    for r in sorted(reports, key=lambda r: r["proc"]):
        result.attempted += r["attempted"] * keys
        result.logged += len(r["steps"]) * keys
        result.errors += len(r["errors"])
        result.error_samples += r["errors"][:3]
        latencies += r["latencies"]
        if r["run_id"] is not None:
            _compare(client, r, keys, result)
    elapsed = max([seconds] + [r.get("elapsed", 0.0) for r in reports])  # the last call ends a little early
    result.achieved_rate = result.logged / elapsed if elapsed else 0.0
    if latencies:
        cuts = statistics.quantiles(latencies, n=20, method="inclusive") if len(latencies) > 1 else latencies * 19
        result.p50_ms, result.p95_ms = cuts[9] * 1000, cuts[18] * 1000
        result.max_ms = max(latencies) * 1000
    return result


def _collect(workers: list[Any], out: Any, deadline: float) -> list[dict[str, Any]]:
    """Every worker's report; raises RuntimeError when one died without reporting or time ran out."""
    reports: list[dict[str, Any]] = []
    while len(reports) < len(workers):
        try:
            reports.append(out.get(timeout=2))
            continue
        except queue.Empty:
            pass
        dead = [w for w in workers if w.exitcode not in (None, 0)]
        if dead or time.monotonic() > deadline:
            for w in workers:
                w.kill()
            raise RuntimeError(f"loadbench: {len(reports)} of {len(workers)} processes reported; exit codes "
                               f"{[w.exitcode for w in workers]} (a crashed worker prints its traceback above)")
    for w in workers:
        w.join(timeout=60)
    return reports


def _compare(client: MlflowClient, report: dict[str, Any], keys: int, result: LoadResult) -> None:
    """Add one run's read-back, lost and extra counts to `result`."""
    for k in range(keys):
        expected = {(s, _value(report["proc"], s, k)) for s in report["steps"]}
        found = [(m.step, m.value) for m in client.get_metric_history(report["run_id"], f"load/m{k}")]
        hits = expected & set(found)
        result.read_back += len(hits)
        result.lost += len(expected - hits)
        result.extra += len(found) - len(hits)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m musicssl.tracking.loadbench", description=__doc__.split("\n")[0])
    p.add_argument("--uri", required=True, help="tracking URI: sqlite:///FILE or http://HOST:PORT")
    p.add_argument("--procs", type=int, default=4, help="concurrent logging processes")
    p.add_argument("--rate", type=float, default=10, help="log calls per second per process")
    p.add_argument("--keys", type=int, default=1, help="metrics per log call (one log_batch)")
    p.add_argument("--seconds", type=float, default=20, help="how long each process logs")
    p.add_argument("--experiment", default="musicssl-loadbench", help="MLflow experiment of the runs")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    args = p.parse_args(argv)
    result = run_load(args.uri, args.procs, args.rate, args.seconds, args.keys, args.experiment)
    print(result.line())
    for sample in result.error_samples[:5]:
        print(f"  error: {sample}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(asdict(result)) + "\n")
    return 1 if result.lost or result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
