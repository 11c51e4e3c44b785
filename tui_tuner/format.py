"""Compact formatting of numbers and errors shared by the engine, the headless table and the TUI."""

from __future__ import annotations

import math
from json import JSONDecodeError
from typing import Any


def fmt_float(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if digits == 0:
        return f"{v:.0f}"
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
        return f"{v:.{max(1, digits - 2)}e}"
    return f"{v:.{digits}g}"


def fmt_loss(v: float | None) -> str:
    """A loss at 4 significant digits, trailing zeros kept (1.000, 0.8020, 12.34): columns of losses line up."""
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:#.4g}"


def fmt_value(v: Any) -> str:
    """A param value as people type it: 6 significant digits for floats, "none" for None."""
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


_SHORT = {"learning_rate": "lr", "batch_size": "bs", "weight_decay": "wd", "warmup_steps": "warm",
          "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "ldrop", "max_grad_norm": "clip",
          "grad_accum": "acc", "schedule": "sched"}


def fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{_SHORT.get(k, k)}={fmt_float(v, 3) if isinstance(v, float) else v}"
                    for k, v in params.items())


def first_line(e: BaseException) -> str:
    """An exception's first line of text (messages from torch or SQLAlchemy run to pages), or its type's name."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def utf8_problem(e: UnicodeDecodeError, where: str, first_line: int = 1) -> str:
    """'where:line: not UTF-8 text (...)' for bytes that failed to decode (Python's own message names neither the
    file nor the line); `first_line` is the line number of the start of the bytes decoded."""
    before = e.object[: e.start]
    line = first_line + before.count(b"\n")
    column = e.start - before.rfind(b"\n")  # 1-based, in bytes
    return f"{where}:{line}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at column {column})"


def json_problem(e: JSONDecodeError, where: str, first_line: int = 1) -> str:
    """'where:line: not valid JSON (...)'; `first_line` is the line number of the start of the text parsed."""
    return f"{where}:{first_line + e.lineno - 1}: not valid JSON ({e.msg})"


def error_line(e: BaseException) -> str:
    """'Type: first line', for errors whose type says what went wrong (OSError, RuntimeError from torch...)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {first_line(e)}" if text else type(e).__name__


def fmt_exact(v: Any) -> str:
    """A param value to edit and send back unchanged: floats at full precision (repr round-trips), "none"."""
    if v is None:
        return "none"
    return repr(v) if isinstance(v, float) else str(v)
