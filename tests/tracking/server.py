"""A real MLflow tracking server on a real PostgreSQL, for tests and for the logging-load benchmark.

`mlflow_on_postgres()` starts, in a fresh temporary folder under /tmp, a PostgreSQL cluster (initdb, a password
login, a database) listening on 127.0.0.1 and a unix socket in that folder, then `mlflow server` on it with
artifacts proxied to a folder beside it, both on free ports; it stops both on exit, whatever happened.

PostgreSQL refuses to run as root: as root, every PostgreSQL command runs as the `postgres` system user
(`runuser`), which owns the temporary folder. The postmaster runs in its own session (pg_ctl calls setsid);
it is stopped with `pg_ctl stop -m immediate`, then, if still alive, SIGKILLed by the pid in `postmaster.pid`
together with its process group. `mlflow server` (uvicorn and its workers) runs in a session of its own and is
stopped as a process group: SIGTERM, then SIGKILL. Every command has a timeout.

Run by hand (prints the URIs, serves until Ctrl-C):  python tests/tracking/server.py
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_USER, PG_PASSWORD, PG_DB = "musicssl", "musicssl-test", "mlflow"
BIN = Path(sys.executable).parent  # the venv's bin: `mlflow`


class ServerError(RuntimeError):
    """PostgreSQL or `mlflow server` is missing, would not start, or would not stop."""


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL cluster."""

    data_dir: Path
    socket_dir: Path
    port: int

    @property
    def uri(self) -> str:
        """SQLAlchemy / MLflow URI of the test database over TCP. SQLAlchemy >= 2.1 reads a bare `postgresql://` as
        psycopg 3; `+psycopg2` names the driver of `psycopg2-binary`."""
        return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{PG_DB}"

    @property
    def dsn(self) -> str:
        """libpq connection string of the test database (for `psycopg2.connect`)."""
        return f"host=127.0.0.1 port={self.port} dbname={PG_DB} user={PG_USER} password={PG_PASSWORD}"


@dataclass(frozen=True)
class MlflowServer:
    """A running `mlflow server` on PostgreSQL."""

    url: str  # http://127.0.0.1:PORT, the tracking URI
    postgres: Postgres
    artifacts: Path  # --artifacts-destination
    log: Path  # the server's stdout + stderr


def free_port() -> int:
    """A TCP port nothing listens on now (a race with other processes is possible but rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path:
    """The folder of `initdb` and `pg_ctl`: $PG_BINDIR, the newest /usr/lib/postgresql/*/bin, or PATH.

    Raises:
        ServerError: PostgreSQL's server programs are not installed.
    """
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    which = shutil.which("initdb")
    candidates += [str(Path(which).parent)] if which else []
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise ServerError("PostgreSQL server programs (initdb, pg_ctl) not found in $PG_BINDIR, /usr/lib/postgresql/*/bin "
                      "or PATH; install them (Debian/Ubuntu: apt-get install postgresql) or set PG_BINDIR")


def _as_pg_user(cmd: list[str]) -> list[str]:
    """`cmd` run as the `postgres` user when we are root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError as e:
        raise ServerError("running as root, and there is no `postgres` system user to run PostgreSQL as; "
                          "create one (useradd -r postgres) or run the tests as a normal user") from e
    return ["runuser", "-u", "postgres", "--", *cmd]


def _give_to_pg_user(path: Path) -> None:
    """As root, make `path` the `postgres` user's (initdb and the postmaster write there)."""
    if os.geteuid() == 0:
        _as_pg_user([])  # fails clearly when there is no such user
        os.chown(path, pwd.getpwnam("postgres").pw_uid, -1)


def _run(cmd: list[str], what: str, timeout: float, log: Path | None = None) -> None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ServerError(f"{what} took over {timeout:g} s: {' '.join(cmd)}") from e
    if out.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise ServerError(f"{what} failed (exit {out.returncode}): {' '.join(cmd)}\n{out.stdout[-2000:]}"
                          f"{out.stderr[-2000:]}\n{tail}")


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@contextlib.contextmanager
def postgres(root: Path, timeout_s: float = 60) -> Iterator[Postgres]:
    """A PostgreSQL cluster in `root/pg` (created; `root` must be writable by the `postgres` user as root).

    Raises:
        ServerError: not installed, or initdb / start / createdb failed (the message holds the server log).
    """
    bindir = pg_bindir()
    data_dir, socket_dir, log = root / "pg", root / "pgsock", root / "pg.log"
    socket_dir.mkdir()
    _give_to_pg_user(socket_dir)
    pwfile = root / "pgpass"
    pwfile.write_text(PG_PASSWORD + "\n")
    port = free_port()
    _run(_as_pg_user([str(bindir / "initdb"), "-D", str(data_dir), "-U", PG_USER, f"--pwfile={pwfile}",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]),
         "initdb", timeout_s)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {socket_dir} -c fsync=off -c max_connections=200"
    try:
        _run(_as_pg_user([str(bindir / "pg_ctl"), "start", "-D", str(data_dir), "-l", str(log), "-w",
                          "-t", str(int(timeout_s)), "-o", opts]), "pg_ctl start", timeout_s + 10, log)
        _run(_as_pg_user([str(bindir / "createdb"), "-h", str(socket_dir), "-p", str(port), "-U", PG_USER, PG_DB]),
             "createdb", timeout_s, log)
        yield Postgres(data_dir, socket_dir, port)
    finally:
        _stop_postgres(bindir, data_dir)


def _stop_postgres(bindir: Path, data_dir: Path) -> None:
    pid = _postmaster_pid(data_dir)
    with contextlib.suppress(ServerError):
        _run(_as_pg_user([str(bindir / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "immediate", "-w", "-t", "20"]),
             "pg_ctl stop", 30)
    if pid is not None and _alive(pid):  # pg_ctl failed: the postmaster leads its own session (setsid)
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill()
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            raise ServerError(f"postmaster {pid} of {data_dir} survived SIGKILL")


def _health(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_server(pg: Postgres, root: Path, workers: int = 2, timeout_s: float = 120) -> Iterator[MlflowServer]:
    """`mlflow server` on `pg`, artifacts proxied to `root/artifacts`, until the block ends.

    Raises:
        ServerError: it exited or did not answer /health within `timeout_s` (the message holds its log).
    """
    port, artifacts, log = free_port(), root / "artifacts", root / "mlflow-server.log"
    artifacts.mkdir()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", pg.uri, "--artifacts-destination", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _health(url):
            if proc.poll() is not None:
                raise ServerError(f"mlflow server exited ({proc.returncode}): {' '.join(cmd)}\n"
                                  + log.read_text(errors="replace")[-4000:])
            if time.monotonic() > deadline:
                raise ServerError(f"mlflow server gave no /health in {timeout_s:g} s\n"
                                  + log.read_text(errors="replace")[-4000:])
            time.sleep(0.5)
        yield MlflowServer(url, pg, artifacts, log)
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL it after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    # the group's other members (uvicorn workers) may outlive the leader by a moment
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)


@contextlib.contextmanager
def mlflow_on_postgres(workers: int = 2) -> Iterator[MlflowServer]:
    """PostgreSQL + `mlflow server` in a fresh temporary folder (removed afterwards)."""
    root = Path(tempfile.mkdtemp(prefix="mlpg", dir="/tmp"))
    try:
        root.chmod(0o755)
        _give_to_pg_user(root)
        with postgres(root) as pg, mlflow_server(pg, root, workers=workers) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop both servers on SIGTERM too
    with mlflow_on_postgres() as s:
        print(f"MLFLOW_TRACKING_URI={s.url}\nbackend {s.postgres.uri}\nartifacts {s.artifacts}\nlog {s.log}",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
