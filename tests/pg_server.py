"""A throwaway PostgreSQL server for the tests: initdb in a temp dir, started on a free port, run as the
unprivileged `postgres` user when the tests run as root (postgres refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PASSWORD = "tuner-test"


class PgUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why."""


def _bindir() -> Path:
    """Debian puts the server binaries outside PATH (/usr/lib/postgresql/<v>/bin); pg_config knows, when present."""
    found = shutil.which("initdb")
    if found:  # often a link into the real bindir, which also has createdb
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not candidates:
        raise PgUnavailable("no initdb: install postgresql (Debian: apt-get install postgresql-15)")
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """One server for the test session. Password auth over TCP (so a wrong password can be tested), trust on
    its private Unix socket (for createdb); fsync off: nothing here must survive a power cut."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="tui-tuner-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
        self._dbs = 0

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=60, cwd=self.root)
        if done.returncode:
            raise PgUnavailable(f"{Path(argv[0]).name} failed: {(done.stderr or done.stdout).strip()[-400:]}")

    def start(self) -> PgServer:
        if self._as:
            shutil.chown(self.root, "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self._as:
            shutil.chown(pwfile, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self._user, "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "30",
                  "-o", f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c max_connections=200", "start")
        return self

    def create_db(self) -> str:
        """A fresh database; returns its URL (the form a user types: postgresql://user:password@host:port/db)."""
        self._dbs += 1
        name = f"t{self._dbs}"
        self._run(str(self.bindir / "createdb"), "-h", str(self.root), "-p", str(self.port), "-U", self._user, name)
        return self.url(name)

    def url(self, db: str, password: str = PASSWORD) -> str:
        return f"postgresql://{self._user}:{password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, cwd=self.root)
        shutil.rmtree(self.root, ignore_errors=True)
