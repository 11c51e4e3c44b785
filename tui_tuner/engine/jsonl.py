"""Append-only JSON-lines files, flushed per record so a crash loses nothing already written."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any


class JsonlWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps({k: _finite(v) for k, v in row.items()}, separators=(",", ":"))
        with self._lock:
            if not self._f.closed:
                self._f.write(line + "\n")
                self._f.flush()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        with self._lock:
            self._f.close()


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
