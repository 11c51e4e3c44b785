"""Compact formatting of numbers and errors shared by the engine, the headless table and the TUI."""

from __future__ import annotations

import math
from typing import Any


def fmt_float(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if digits == 0:
        return f"{v:.0f}"
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
        return f"{v:.{max(1, digits - 2)}e}"
    return f"{v:.{digits}g}"


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


def error_line(e: BaseException) -> str:
    """'Type: first line', for errors whose type says what went wrong (OSError, RuntimeError from torch...)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {first_line(e)}" if text else type(e).__name__
