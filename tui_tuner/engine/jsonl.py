"""Append-only JSON-lines files, one write(2) per record so a crash loses nothing already written."""

from __future__ import annotations

import errno
import json
import math
import os
import threading
from pathlib import Path
from typing import Any


class JsonlWriter:
    """A record is either written whole or raises OSError with the file as it was (a short write, as on a full
    disk, is ended with a newline before the next record): a failed write can be retried without tearing a line.
    No buffer: a write that failed is never written later behind the caller's back."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._torn = False  # the last write was short: the file does not end with a newline
        self._lock = threading.Lock()

    def write(self, row: dict[str, Any]) -> None:
        line = (json.dumps({k: _finite(v) for k, v in row.items()}, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._fd is None:
                return
            if self._torn:
                os.write(self._fd, b"\n")
                self._torn = False
            if os.write(self._fd, line) < len(line):  # O_APPEND: one record, one write(2)
                self._torn = True
                raise OSError(errno.ENOSPC, f"short write to {self.path} (disk full?)")

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)


def _finite(v: Any) -> Any:
    # JSON has no NaN/inf; None keeps the line parseable by every reader.
    return None if isinstance(v, float) and not math.isfinite(v) else v


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete line; a torn last line (crash mid-write) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
