"""Real nats-server and PostgreSQL processes for tests and benchmarks, on free ports.

``NatsServer`` runs the installed ``nats-server`` binary with JetStream and file storage in a
directory of its own; ``PostgresServer`` makes a throwaway cluster with ``initdb`` and runs it
with ``pg_ctl`` (as an unprivileged user when the caller is root, since initdb refuses to run
as root). Both can be stopped, killed, paused (SIGSTOP) and started again on the same port and
data, for failure tests.

``make test`` installs the Debian packages ``nats-server`` and ``postgresql`` when the binaries
are missing; ``FLEETCHAT_TEST_POSTGRES_URL`` points the tests at an existing database instead.
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
import time
from pathlib import Path

__all__ = [
    "NatsServer",
    "PostgresServer",
    "ServiceUnavailable",
    "find_nats_server",
    "find_postgres_bindir",
    "free_port",
]


class ServiceUnavailable(RuntimeError):
    """A binary is missing or a server did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceUnavailable(f"the server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise ServiceUnavailable(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of ``pid`` is stopped (Linux /proc; elsewhere, return)."""
    tasks = Path(f"/proc/{pid}/task")
    deadline = time.monotonic() + timeout
    while tasks.is_dir() and time.monotonic() < deadline:
        states = []
        for stat in tasks.glob("*/stat"):
            with contextlib.suppress(OSError):
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)


def find_nats_server() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)),
        None,
    )


def find_postgres_bindir() -> str | None:
    """The directory of initdb, pg_ctl and postgres: PATH first, then Debian's layout."""
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(os.path.realpath(initdb)).parent)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return str(Path(found[0]).parent) if found else None


class NatsServer:
    """nats-server with JetStream on a free port; ``url`` is what clients connect to."""

    def __init__(self, store_dir: Path, *, port: int | None = None) -> None:
        binary = find_nats_server()
        if binary is None:
            raise ServiceUnavailable(
                "nats-server is not installed (Debian: apt-get install nats-server)"
            )
        self.binary = binary
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        args += ["-sd", str(self.store_dir), "-l", str(self.log_path)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, timeout, self.proc)
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), waiting for the process to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP, and wait until the server has stopped (a signal is asynchronous: without the
        wait, a request sent right after can still be answered)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            _wait_stopped(self.proc.pid)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresServer:
    """A throwaway PostgreSQL cluster in ``data_dir`` on a free port (trust auth).

    fsync is off (an OS crash may lose data); commits stay synchronous, so a killed or
    restarted server loses nothing committed."""

    def __init__(self, base_dir: Path, *, port: int | None = None) -> None:
        bindir = find_postgres_bindir()
        if bindir is None:
            raise ServiceUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl) are not installed "
                "(Debian: apt-get install postgresql)"
            )
        self.bindir = Path(bindir)
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "pgdata"
        self.port = port or free_port()
        self.user = self._run_as()
        self._initialised = False

    @staticmethod
    def _run_as() -> str | None:
        """None: run as ourselves; else the unprivileged user to run as (we are root)."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                return name
        raise ServiceUnavailable("running as root and no unprivileged user to run PostgreSQL as")

    @property
    def db_user(self) -> str:
        return self.user or pwd.getpwuid(os.geteuid()).pw_name

    @property
    def url(self) -> str:
        return f"postgresql://{self.db_user}@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return ["runuser", "-u", self.user, "--", *args]

    def _init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            # The user must reach its data directory through every parent.
            for parent in [self.base_dir, *self.base_dir.parents]:
                if parent == Path("/"):
                    break
                with contextlib.suppress(PermissionError):
                    os.chmod(parent, os.stat(parent).st_mode | 0o011)
            os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._initialised = True

    def start(self, timeout: float = 30.0) -> PostgresServer:
        if not self._initialised:
            self._init()
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base_dir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.base_dir / "postgres.log"),
                "-o",
                opts,
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_port(self.port, timeout)
        return self

    def stop(self, mode: str = "fast") -> None:
        if not self.data_dir.exists():
            return
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"
            ),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
