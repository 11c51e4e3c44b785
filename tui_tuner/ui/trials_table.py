"""The trials table: one row per trial, cells updated in place only when a trial's version moved; sortable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from tui_tuner.engine.snapshot import STATES, SweepSnapshot, TrialSnapshot
from tui_tuner.format import fmt_bytes, fmt_float, fmt_params
from tui_tuner.state_words import state_word

STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "complete": "cyan", "pruned": "magenta",
               "failed": "bold red", "waiting": "dim", "killed": "magenta", "interrupted": "yellow", "parked": "blue",
               "starting": "green", "cancelled": "dim"}

# key, label, width (None: auto)
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("number", "#", 3), ("state", "state", 11), ("device", "dev", 4), ("step", "step", 9), ("loss", "loss", 5),
    ("eval", "eval", 5), ("best", "best", 5), ("lr", "lr", 7), ("parent", "fork of", 8), ("params", "params", None),
    ("tok_s", "tok/s", 6), ("mem", "peak mem", 8),
)


# Added once a snapshot shows several workers (a shared study): a single box's table stays as it was
WORKER_COLUMN = ("worker", "worker", 10)


def _num(v: float | None) -> float:
    return float("inf") if v is None else v


# sort modes the `s` key cycles through: (label, column key, sort key, reverse)
SORTS: tuple[tuple[str, str, Callable[[TrialSnapshot], Any], bool], ...] = (
    ("number", "number", lambda t: t.number, False),
    ("best eval", "best", lambda t: (_num(t.best_eval_loss), t.number), False),
    ("loss", "loss", lambda t: (_num(t.loss), t.number), False),
    ("state", "state", lambda t: (STATES.index(t.state), t.number), False),
    ("step", "step", lambda t: (t.step, t.number), True),
)


def short_device(device: str) -> str:
    """"cuda:3" -> "g3" (a column 4 wide); "cpu" as is; "" before the trial is placed."""
    return f"g{device.split(':', 1)[1]}" if device.startswith("cuda:") else device


def trial_cells(t: TrialSnapshot, shared: bool = False) -> tuple[Any, ...]:
    """`shared`: the study has several workers; the row then also names the one running the trial."""
    state = state_word(t.state, t.user_attrs)
    step = "-" if t.state in ("waiting", "cancelled") else f"{t.step}/{t.total_steps or '?'}"
    parent = f"#{t.parent}@{t.fork_step}" if t.parent is not None else ""
    params = fmt_params({**t.params, **t.overrides})
    return (Text(str(t.number), justify="right"), Text(state, style=STATE_STYLE.get(t.state, "")),
            short_device(t.device), Text(step, justify="right"), fmt_float(t.loss, 3), fmt_float(t.eval_loss, 3),
            fmt_float(t.best_eval_loss, 3), fmt_float(t.lr, 2), parent, params, fmt_float(t.tokens_per_s, 0),
            fmt_bytes(t.peak_mem_bytes), *((str(t.user_attrs.get("worker") or ""),) if shared else ()))


class TrialsTable(DataTable):
    """Rows keyed by trial number; `selected` follows the cursor whatever the sort order."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._cells: dict[str, tuple[Any, ...]] = {}
        self._versions: dict[str, tuple[int, str]] = {}
        self._columns: list[tuple[str, str, int | None]] = list(COLUMNS)
        self._snaps: dict[str, TrialSnapshot] = {}
        self.sort_index = 0

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, width=width, key=key)

    @property
    def selected(self) -> int | None:
        if not self.row_count:
            return None
        try:
            return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value or "")
        except Exception:
            return None

    def select(self, number: int) -> None:
        """Put the cursor on trial `number`'s row (no-op if it has none)."""
        try:
            self.move_cursor(row=self.get_row_index(str(number)), animate=False)
        except RowDoesNotExist:
            return

    def show(self, snap: SweepSnapshot) -> bool:
        """Apply a snapshot; returns True if any row changed."""
        changed = False
        seen = set()
        shared = len(snap.workers) > 1 or WORKER_COLUMN in self._columns
        if shared and WORKER_COLUMN not in self._columns:
            self._columns.append(WORKER_COLUMN)
            self.add_column(WORKER_COLUMN[1], width=WORKER_COLUMN[2], key=WORKER_COLUMN[0])
            self._versions.clear()  # every row gets its worker cell below
            self._cells = {k: (*v, "") for k, v in self._cells.items()}
        for t in snap.trials:
            key = str(t.number)
            seen.add(key)
            stamp = (t.version, t.state)
            if self._versions.get(key) == stamp:
                continue
            self._versions[key] = stamp
            self._snaps[key] = t
            cells = trial_cells(t, shared)
            old = self._cells.get(key)
            if old is None:
                self.add_row(*cells, key=key)
            else:
                for (col, _, width), new, prev in zip(self._columns, cells, old, strict=True):
                    if new != prev:
                        # Re-measuring a column costs a screen layout: only when the text outgrows it.
                        grow = width is None and len(str(new)) > self.columns[col].content_width  # type: ignore[index]
                        self.update_cell(key, col, new, update_width=grow)
            self._cells[key] = cells
            changed = True
        for key in list(self._cells):
            if key not in seen:
                self.remove_row(key)
                del self._cells[key], self._versions[key], self._snaps[key]
                changed = True
        if changed and self.sort_index:
            self.apply_sort()
        return changed

    def cycle_sort(self) -> str:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.apply_sort()
        return SORTS[self.sort_index][0]

    def apply_sort(self) -> None:
        selected = self.selected
        _, col, key_fn, reverse = SORTS[self.sort_index]
        snaps = self._snaps
        self.sort("number", key=lambda cell: key_fn(snaps[cell.plain]), reverse=reverse)
        for key, text, _ in self._columns:
            self.columns[key].label = Text(text + (" ▼" if key == col and self.sort_index else ""))  # type: ignore[index]
        if selected is not None:
            self.move_cursor(row=self.get_row_index(str(selected)), animate=False, scroll=False)
        self.refresh()
