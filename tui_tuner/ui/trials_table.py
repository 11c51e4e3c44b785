"""The trials table: one row per trial, cells updated in place only when a trial's version moved; sortable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from tui_tuner.engine.snapshot import STATES, SweepSnapshot, TrialSnapshot
from tui_tuner.format import fmt_bytes, fmt_loss, fmt_lr, fmt_params, fmt_rate, fmt_steps
from tui_tuner.state_words import ENDED_EARLY, end_reason, state_word

STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "complete": "cyan", "pruned": "magenta",
               "failed": "bold red", "waiting": "dim", "killed": "magenta", "interrupted": "yellow", "parked": "blue",
               "starting": "green", "cancelled": "dim"}
BEST_MARK = "★"  # beside the best complete trial's number
SORT_MARK = "▼"  # before the sorted column's label: a label cut at the right edge must not lose it

# key, label, minimum width (None: the content's). Widths follow the content (fit_widths); `#` and state stay
# on screen when the table scrolls right (FROZEN); params go last, as wide as what is left, and the detail
# screen has them all.
COLUMNS: tuple[tuple[str, str, int | None], ...] = (
    ("number", "#", None), ("state", "state", None), ("why", "why", None), ("device", "dev", None),
    ("step", "step", None), ("loss", "loss", None), ("eval", "eval", None), ("best", "best", None),
    ("lr", "lr", None), ("parent", "fork of", None), ("tok_s", "tok/s", None), ("mem", "peak mem", None),
    ("params", "params", None),
)
FROZEN = 2  # number and state
FLEX = "params"  # the column cut (with an ellipsis) to fit the terminal
MIN_FLEX = 12


# Added once a snapshot shows several workers (a shared study): a single box's table stays as it was
WORKER_COLUMN = ("worker", "worker", None)


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
SORTABLE = frozenset(col for _, col, _, _ in SORTS[1:])  # "number" is the unmarked default


def short_device(device: str) -> str:
    """"cuda:3" -> "g3" (a column 4 wide); "cpu" as is; "" before the trial is placed."""
    return f"g{device.split(':', 1)[1]}" if device.startswith("cuda:") else device


def params_cell(t: TrialSnapshot) -> str:
    """The searched params, short; "+N" counts the fixed params this trial overrides (the detail screen names
    them)."""
    more = [k for k in t.overrides if k not in t.params]
    return fmt_params(t.params) + (f" +{len(more)}" if more else "")


def trial_cells(t: TrialSnapshot, shared: bool = False, best: bool = False) -> tuple[Any, ...]:
    """`shared`: the study has several workers; the row then also names the one running the trial. `best`: it
    is the best complete trial (marked beside its number)."""
    step = "-" if t.state in ("waiting", "cancelled") else fmt_steps(t.step, t.total_steps)
    parent = f"#{t.parent}@{t.fork_step}" if t.parent is not None else ""
    number = Text(justify="right").append(BEST_MARK, style="bold yellow") if best else Text(justify="right")
    number.append(str(t.number))
    return (number, Text(state_word(t.state, t.user_attrs), style=STATE_STYLE.get(t.state, "")),
            Text(end_reason(t.state, t.user_attrs)[0], style="dim"), short_device(t.device),
            Text(step, justify="right"), fmt_loss(t.loss), fmt_loss(t.eval_loss), fmt_loss(t.best_eval_loss),
            fmt_lr(t.lr), parent, Text(fmt_rate(t.tokens_per_s), justify="right"),
            Text(fmt_bytes(t.peak_mem_bytes), justify="right"),
            Text(params_cell(t), no_wrap=True, overflow="ellipsis"),
            *((str(t.user_attrs.get("worker") or ""),) if shared else ()))


def _width(cell: Any) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


def fit_widths(columns: list[tuple[str, str, int | None]], rows: list[tuple[Any, ...]], table_width: int,
               padding: int = 1) -> list[int]:
    """Each column as wide as its label (and the sort marker's room) or its widest cell; FLEX no wider than
    what the frozen columns leave of `table_width`, so that scrolled right it shows whole or ends in "…"."""
    widths = []
    for i, (key, label, least) in enumerate(columns):
        head = cell_len(label) + (cell_len(SORT_MARK) if key in SORTABLE else 0)
        widths.append(max(least or 0, head, *(_width(r[i]) for r in rows)))
    keys = [key for key, _, _ in columns]
    if FLEX in keys:
        i = keys.index(FLEX)
        frozen = sum(w + 2 * padding for w in widths[:FROZEN])
        room = table_width - frozen - 2 * padding - 1  # the vertical scrollbar
        widths[i] = max(MIN_FLEX, min(widths[i], room))
    return widths


class TrialsTable(DataTable):
    """Rows keyed by trial number; `selected` follows the cursor whatever the sort order. `hide_ended` (the h key)
    leaves out the trials in ENDED_EARLY, and the table's title says so."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, fixed_columns=FROZEN, **kwargs)
        self._cells: dict[str, tuple[Any, ...]] = {}
        self._versions: dict[str, tuple[int, str, bool]] = {}
        self._columns: list[tuple[str, str, int | None]] = list(COLUMNS)
        self._snaps: dict[str, TrialSnapshot] = {}
        self._last: SweepSnapshot | None = None
        self.sort_index = 0
        self.hide_ended = False
        self.hidden = 0  # rows the filter leaves out of the last snapshot

    def on_mount(self) -> None:
        for key, label, _ in COLUMNS:
            self.add_column(label, width=max(1, cell_len(label)), key=key)

    def on_resize(self) -> None:
        self._fit()

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
        self._last = snap
        changed = unordered = False
        seen = set()
        shared = len(snap.workers) > 1 or WORKER_COLUMN in self._columns
        if shared and WORKER_COLUMN not in self._columns:
            self._columns.append(WORKER_COLUMN)
            self.add_column(WORKER_COLUMN[1], width=len(WORKER_COLUMN[1]), key=WORKER_COLUMN[0])
            self._versions.clear()  # every row gets its worker cell below
            self._cells = {k: (*v, "") for k, v in self._cells.items()}
        shown = [t for t in snap.trials if not (self.hide_ended and t.state in ENDED_EARLY)]
        self.hidden = len(snap.trials) - len(shown)
        for t in shown:
            key = str(t.number)
            seen.add(key)
            best = t.number == snap.best_trial
            stamp = (t.version, t.state, best)  # a trial losing the best mark changes without a new version
            if self._versions.get(key) == stamp:
                continue
            self._versions[key] = stamp
            self._snaps[key] = t
            cells = trial_cells(t, shared, best)
            old = self._cells.get(key)
            if old is None:
                # A row shown again once the filter is off lands at the end: out of order by number.
                unordered = unordered or any(int(k) > t.number for k in self._cells)
                self.add_row(*cells, key=key)
            else:
                for (col, _, _), new, prev in zip(self._columns, cells, old, strict=True):
                    if new != prev:
                        self.update_cell(key, col, new)  # widths are fit_widths' (_fit below)
            self._cells[key] = cells
            changed = True
        for key in list(self._cells):
            if key not in seen:
                self.remove_row(key)
                del self._cells[key], self._versions[key], self._snaps[key]
                changed = True
        if changed:
            self._fit()
        if (changed and self.sort_index) or unordered:
            self.apply_sort()
        self._title()
        return changed

    def toggle_filter(self) -> bool:
        """Hide or show again the trials that ended early; returns whether they are hidden now."""
        self.hide_ended = not self.hide_ended
        if self._last is not None:
            self.show(self._last)
        return self.hide_ended

    def _title(self) -> None:
        self.set_class(self.hide_ended, "-filtered")
        self.border_title = (f"filter on: {self.hidden} pruned/failed/killed/cancelled/interrupted hidden "
                             "(h: show all)" if self.hide_ended else None)

    def _fit(self) -> None:
        """Set each column's width from its content and the terminal's (re-laying out only when one moved)."""
        if not self.is_mounted:
            return
        widths = fit_widths(self._columns, list(self._cells.values()), self.size.width or self.app.size.width,
                            self.cell_padding)
        moved = False
        for (key, _, _), width in zip(self._columns, widths, strict=True):
            column = self.columns[key]  # type: ignore[index]
            if column.width != width or column.auto_width:
                column.width, column.auto_width = width, False
                moved = True
        if moved:
            self._require_update_dimensions = True
            self.refresh()

    def cycle_sort(self) -> str:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        self.apply_sort()
        return SORTS[self.sort_index][0]

    def apply_sort(self) -> None:
        selected = self.selected
        _, col, key_fn, reverse = SORTS[self.sort_index]
        snaps = self._snaps
        self.sort("number", key=lambda cell: key_fn(snaps[cell.plain.lstrip(BEST_MARK)]), reverse=reverse)
        for key, text, _ in self._columns:
            marked = key == col and self.sort_index
            self.columns[key].label = Text(SORT_MARK + text if marked else text)  # type: ignore[index]
        if selected is not None:
            self.move_cursor(row=self.get_row_index(str(selected)), animate=False, scroll=False)
        self.refresh()
