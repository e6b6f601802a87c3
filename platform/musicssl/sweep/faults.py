"""Fault injection for testing a cluster's recovery: make chosen trials raise, as a crashed trial would.

Set ``MUSICSSL_INJECT_FAULT`` in the environment the trials run in (the driver's, for an in-process Ray; the
raylets' on a cluster) to a comma-separated list of ``<key-part>@<step>x<times>``: a trial whose key contains
``<key-part>`` raises `InjectedFault` at its first checkpoint at or after pretraining step ``<step>`` (written, its
probe jobs not yet handed over), in each of its first ``<times>`` attempts (counted in the trial's folder, so
retries and resumed sweeps see the count). Example: ``MUSICSSL_INJECT_FAULT=-s0@20x1,-s1@20x9`` makes seed 0
fail once and seed 1 every time. Unset, nothing happens.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ENV = "MUSICSSL_INJECT_FAULT"
_SPEC = re.compile(r"^(?P<part>[^@,]+)@(?P<step>\d+)x(?P<times>\d+)$")
_COUNT = ".injected-faults"


class InjectedFault(RuntimeError):
    """The failure `MUSICSSL_INJECT_FAULT` asked for."""


def parse(spec: str) -> list[tuple[str, int, int]]:
    """``(key_part, step, times)`` per entry of a `MUSICSSL_INJECT_FAULT` value.

    Raises:
        ValueError: An entry is not ``<key-part>@<step>x<times>``.
    """
    faults = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        m = _SPEC.match(entry)
        if m is None:
            raise ValueError(f"{ENV}: {entry!r} is not <key-part>@<step>x<times> (e.g. -s0@20x1)")
        faults.append((m["part"], int(m["step"]), int(m["times"])))
    return faults


def maybe_fail(trial_key: str, step: int, trial_dir: Path) -> None:
    """Raise `InjectedFault` if `MUSICSSL_INJECT_FAULT` asks for it at this trial and step (see the module doc)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for part, at, times in parse(spec):
        if part not in trial_key or step < at:
            continue
        counter = trial_dir / _COUNT
        done = int(counter.read_text()) if counter.exists() else 0
        if done < times:
            counter.write_text(str(done + 1))
            raise InjectedFault(f"injected fault {done + 1} of {times} at step {step} ({ENV}={spec})")
