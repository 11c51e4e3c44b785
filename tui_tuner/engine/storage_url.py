"""A --storage URL: which driver it means, the connection pool the trial threads need, how it is shown (never
with its password), and a connect error said in one line."""

from __future__ import annotations

import re
from typing import Any

import optuna

# libpq waits for an unreachable host as long as TCP does (minutes); a sweep should say so at once.
CONNECT_TIMEOUT_S = 10
# Besides the trial threads: the scheduler's asks, the API's reads, the heartbeat and an export.
EXTRA_CONNECTIONS = 4


def with_driver(url: str) -> str:
    """`postgresql://` means psycopg 3 (the project's dependency); SQLAlchemy would pick psycopg2 by default,
    which is not installed. An explicit `postgresql+driver://` is kept as written."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)


def shown(url: str) -> str:
    """The URL for messages, logs and files others may read: the password masked."""
    return re.sub(r"^([a-z0-9+.-]+://[^:/@]*):[^@]*@", r"\1:***@", url, flags=re.IGNORECASE)


def engine_kwargs(url: str, threads: int) -> dict[str, Any]:
    """A pool per process with a connection for every trial thread and the engine's own threads, checked
    before use: over a run of hours a server or a NAT drops idle connections."""
    if url.startswith("sqlite"):
        return {}  # SQLite's pools take none of these; it is single-box anyway
    kwargs: dict[str, Any] = {"pool_size": threads + EXTRA_CONNECTIONS, "max_overflow": threads,
                              "pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "tui-tuner"}
    return kwargs


def open_rdb(url: str, threads: int) -> optuna.storages.RDBStorage:
    """Connects at once (creating Optuna's tables on an empty database), so a bad URL fails before any run dir
    is written. Raises with `connect_problem` in mind: callers say `shown(url)` and that line."""
    url = with_driver(url)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url, threads))


def connect_problem(e: BaseException, url: str) -> str:
    """One line naming what is wrong, from the noisy error SQLAlchemy and the driver give."""
    if isinstance(e, ImportError):
        scheme = url.split("://", 1)[0]
        return f"no database driver for {scheme}:// is installed (PostgreSQL: postgresql://user:password@host/db)"
    text = str(e).split("\n(Background on this error", 1)[0]
    text = re.sub(r"^\([\w.]+\) ", "", text)  # "(psycopg.OperationalError) "
    text = re.sub(r"^connection failed: ", "", text)
    if "Can't load plugin: sqlalchemy.dialects:" in text:
        return f"unknown database kind {text.rsplit(':', 1)[-1]!r} (PostgreSQL: postgresql://user:password@host/db)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = re.sub(r"FATAL:\s+", "", lines[0] if lines else type(e).__name__)
    return line
