"""Helpers for the tests that start real Ray nodes with `ray start` (test_ray_job.py, test_node_loss.py).

A node started here is this test's own: its own short temporary folder (Ray's unix sockets must stay under ~100
characters), free ports, and its own process group (`start_new_session`). Its processes are found by that group,
by the temporary folder in their command line or working directory, and as descendants of those (Ray's workers
rename themselves `ray::...`, which hides the folder from their command line), and are stopped one by one, never
with `ray stop`, which would stop every Ray instance on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgrp, command line, working directory + '/') of every live (non-zombie) process but this one."""
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            state, ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
            if state in ("Z", "X"):
                continue
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd") + "/"
            except OSError:
                cwd = ""
        except (OSError, ValueError):
            continue  # gone meanwhile
        procs[int(entry)] = (int(ppid), int(pgrp), cmd, cwd)
    return procs


def cluster_pids(pgid: int, temp_dir: str) -> list[int]:
    """Live processes of one `ray start` node: in the process group it led, with its temporary folder in their
    command line or as (a parent of) their working directory, or descended from one of those."""
    mark = temp_dir.rstrip("/") + "/"
    procs = _processes()
    found = {pid for pid, (_, pgrp, cmd, cwd) in procs.items() if pgrp == pgid or mark in cmd or cwd.startswith(mark)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in procs.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return sorted(found)


def kill_now(pgid: int, temp_dir: str) -> list[int]:
    """SIGKILL every process of the node at once (the machine is gone); the pids killed."""
    pids = cluster_pids(pgid, temp_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return pids


def stop_cluster(pgid: int, temp_dir: str, grace_s: float, timeout_s: float) -> list[int]:
    """SIGTERM a node's processes, SIGKILL what is left after `grace_s` (gcs_server outlives a SIGTERM by more than
    10 s); the pids still alive after `timeout_s`."""
    now = time.monotonic()
    for sig, until in ((signal.SIGTERM, now + grace_s), (signal.SIGKILL, now + timeout_s)):
        for pid in cluster_pids(pgid, temp_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        while cluster_pids(pgid, temp_dir) and time.monotonic() < until:
            time.sleep(0.5)
    return cluster_pids(pgid, temp_dir)


def ray_start(cmd: list[str], env: dict[str, str], log: Path, cwd: str, timeout_s: float) -> tuple[int, int]:
    """Run `ray start ...` in a session (process group) of its own, its output to `log` (daemons must not hold a
    pipe open); (process group id, exit code), exit code -1 if it was still running after `timeout_s` (killed)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
        try:
            return proc.pid, proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.pid, -1


def http_status(url: str, token: str | None = None) -> int:
    """HTTP status of a GET (with a bearer token), 0 while nothing listens."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # not listening yet
        return 0


def tail(path: Path, chars: int = 6000) -> str:
    """The end of a log file."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"
