"""Compact formatting of numbers and errors shared by the engine, the headless table and the TUI."""

from __future__ import annotations

import math
from json import JSONDecodeError
from typing import Any

# One formatter per kind of number, each at a fixed number of significant digits, so that the same kind reads
# the same everywhere (table, detail, dialogs, charts, headless, export, event messages). "-": no value yet.
# Editable values are the exception: fmt_exact, which round-trips.


def _missing(v: float | None) -> bool:
    return v is None or not math.isfinite(v)


def fmt_loss(v: float | None) -> str:
    """A loss or eval loss at 4 significant digits, trailing zeros kept (1.000, 0.8020, 12.34): columns of
    losses line up."""
    if _missing(v):
        return "-"
    return f"{v:#.4g}"


def _sci(v: float, digits: int) -> str:
    """Scientific at `digits` significant digits with a short exponent: 2.3e-3, not 2.3e-03."""
    mantissa, exp = f"{v:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exp)}"


def fmt_lr(v: float | None) -> str:
    """A learning rate, always scientific at 2 significant digits (2.3e-3, 1.6e-2): LRs span decades, and one
    form keeps 0.016 from sitting beside 2.3e-03."""
    if _missing(v):
        return "-"
    return "0" if v == 0 else _sci(v, 2)  # type: ignore[arg-type]


def _is_lr(name: str) -> bool:
    return name == "learning_rate" or name == "lr" or name.endswith("_lr")


def fmt_param(name: str, v: Any) -> str:
    """A param value in a compact view (table, headless, events): LRs as fmt_lr, other floats at 3 significant
    digits (0.01, 0.123, 1.5e-5), the rest as is. The detail screen shows every value in full (fmt_value)."""
    if isinstance(v, float) and not isinstance(v, bool):
        if _is_lr(name):
            return fmt_lr(v)
        if v == 0 or 1e-3 <= abs(v) < 1e4:
            return f"{v:.3g}"
        return _sci(v, 3) if math.isfinite(v) else str(v)
    return fmt_value(v)


def fmt_value(v: Any) -> str:
    """A param value in full, as people type it: 6 significant digits for floats, "none" for None."""
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _sig3(x: float) -> str:
    """3 significant digits for 0 <= |x| < 1000 without an exponent: 1.50, 41.5, 410."""
    return f"{x:.{2 if abs(x) < 10 else 1 if abs(x) < 100 else 0}f}"


def fmt_bytes(n: float | None) -> str:
    """A size at 3 significant digits with a binary unit: 512B, 1.00M, 41.5M, 410M, 12.3G."""
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1000:  # not 1024: "1020M" would be a fourth digit
            return f"{n:.0f}B" if unit == "B" else _sig3(n) + unit
        n /= 1024
    return _sig3(n) + "T" if abs(n) < 1000 else f"{n:.0f}T"


def fmt_rate(v: float | None) -> str:
    """A rate (tokens/s) at 3 significant digits with k/M: 950, 12.1k, 1.23M."""
    if _missing(v):
        return "-"
    for unit in ("", "k", "M"):
        if abs(v) < 999.5 or unit == "M":  # type: ignore[arg-type]
            return _sig3(v) + unit  # type: ignore[arg-type]
        v /= 1000  # type: ignore[operator]
    return str(v)


def fmt_count(n: float | None) -> str:
    """A count or a step: a whole number, no separators (steps are typed back into the fork dialog)."""
    return "-" if n is None else str(int(n))


def fmt_steps(step: int, total: int | None) -> str:
    """Progress in steps: 640/1000, or 640/? while the total is not known."""
    return f"{fmt_count(step)}/{fmt_count(total) if total else '?'}"


def fmt_duration(s: float | None) -> str:
    """A duration at a glance: 45s, 12m05s, 3h07m, 2d04h (two units at most, the larger first)."""
    if s is None or not math.isfinite(s):
        return "-"
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# Short names the compact views use; the detail screen names every param in full.
SHORT_NAMES = {"learning_rate": "lr", "weight_decay": "wd", "warmup_steps": "warm", "lora_r": "r",
               "lora_alpha": "α", "lora_dropout": "drop", "batch_size": "bs", "max_grad_norm": "clip",
               "grad_accum": "acc", "schedule": "sched", "min_lr_ratio": "minlr", "label_smoothing": "ls",
               "momentum": "mom", "optimizer": "opt"}


def fmt_params(params: dict[str, Any]) -> str:
    """k=v with short names and compact values: "lr=2.3e-3 wd=0.04 r=16"."""
    return " ".join(f"{SHORT_NAMES.get(k, k)}={fmt_param(k, v)}" for k, v in params.items())


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
