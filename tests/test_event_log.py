"""The Events panel (issue 14, defect 7): newest event in view after tab switches and resizes, each event once,
long lines wrapped whole. Pilot tests on the snapshot tests' fake sweep (no training: the panel is the subject)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import textual.app
import textual.pilot

from tests.test_ui_snapshots import T0, _app
from tui_tuner.engine.events import Event
from tui_tuner.ui.event_log import EventLogPanel
from tui_tuner.ui.messages import EngineEvent

pytestmark = pytest.mark.anyio

LONG = ("trial 9 failed: RuntimeError: CUDA out of memory while allocating the optimizer state of the LoRA "
        "adapter; the last words of this line must be on screen")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def quick_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    async def short_wait(min_sleep: float = 0.0, max_sleep: float = 1.0) -> None:
        await asyncio.sleep(max(0.02, min(min_sleep, 0.1)))

    monkeypatch.setattr(textual.app, "wait_for_idle", short_wait)
    monkeypatch.setattr(textual.pilot, "wait_for_idle", short_wait)


def visible(panel: EventLogPanel) -> str:
    """What the panel shows on screen now (its rendered lines at the current scroll), one row per line."""
    height = panel.scrollable_content_region.height
    return "\n".join(panel.render_line(y).text.rstrip() for y in range(height))


def new_events(first: int, n: int) -> list[Event]:
    return [Event(seq, T0 + seq, "started", seq, f"trial {seq} started (event {seq})") for seq in range(first,
                                                                                                        first + n)]


async def post(pilot: Any, events: list[Event]) -> None:
    """As the subscription delivers them: EngineEvent messages, handled by the app."""
    for ev in events:
        pilot.app.post_message(EngineEvent(ev))
    await pilot.pause()
    await pilot.pause()


async def test_tab_switch_away_and_back_shows_the_newest_events() -> None:
    async with _app().run_test(size=(80, 24)) as pilot:
        panel = pilot.app.query_one(EventLogPanel)
        await pilot.press("4")
        await post(pilot, new_events(8, 20))
        assert "(event 27)" in visible(panel)
        await pilot.press("1")
        await post(pilot, new_events(28, 15))  # arrive while the panel is hidden
        await pilot.press("4")
        await pilot.pause()
        await pilot.pause()
        shown = visible(panel)
        assert "(event 42)" in shown, shown
        assert panel.scroll_offset.y == panel.max_scroll_y
        await post(pilot, new_events(43, 3))  # and the panel follows new ones once shown again
        assert "(event 45)" in visible(panel)


async def test_resize_keeps_the_newest_in_view_and_wraps_at_the_new_width() -> None:
    async with _app().run_test(size=(80, 24)) as pilot:
        panel = pilot.app.query_one(EventLogPanel)
        await pilot.press("4")
        await post(pilot, [*new_events(8, 20), Event(28, T0 + 28, "failed", 9, LONG)])
        for width, height in ((120, 24), (80, 24), (80, 18)):  # the last: the same width, fewer rows
            await pilot.resize_terminal(width, height)
            await pilot.pause()
            await pilot.pause()
            shown = visible(panel)
            assert "must be on screen" in " ".join(shown.split()), (width, height, shown)
            assert panel.scroll_offset.y == panel.max_scroll_y
            widest = max(len(line) for line in shown.splitlines())
            assert widest <= panel.scrollable_content_region.width
            assert widest > panel.scrollable_content_region.width - 20  # drawn at this width, not the old one


async def test_a_long_line_wraps_whole_at_80_columns() -> None:
    async with _app().run_test(size=(80, 24)) as pilot:
        panel = pilot.app.query_one(EventLogPanel)
        await pilot.press("4")
        await post(pilot, [Event(8, T0 + 8, "failed", 9, LONG)])
        joined = " ".join(visible(panel).split())
        assert LONG.split(": ", 1)[1] in joined  # every word of it, across its wrapped lines
        await post(pilot, new_events(9, 20))  # the scrollbar appears: lines drawn before it must not be cut
        await pilot.press("up")
        panel.scroll_to(y=0, animate=False, immediate=True)
        await pilot.pause()
        assert panel.max_scroll_x == 0  # nothing is off to the right


async def test_backfill_and_subscription_overlap_shows_each_event_once() -> None:
    async with _app().run_test(size=(80, 24)) as pilot:
        panel = pilot.app.query_one(EventLogPanel)
        await pilot.press("4")
        backfill = new_events(8, 3)
        panel.reload([*pilot.app.source.events_since(0), *backfill], T0)
        await post(pilot, [backfill[-1], *new_events(11, 1), backfill[0]])  # repeats, around a new one
        await pilot.pause()
        assert [e.seq for e in panel.events] == list(range(1, 12))
        text = "\n".join(line.text for line in panel.lines)
        assert text.count("(event 10)") == 1 and text.count("(event 8)") == 1 and text.count("(event 11)") == 1


async def test_a_renumbered_event_is_not_shown_again() -> None:
    """A resumed run's open() renumbers the events emitted before it (after the earlier process's): a client that
    had them under their first numbers is sent them again under the new ones."""
    async with _app().run_test(size=(80, 24)) as pilot:
        panel = pilot.app.query_one(EventLogPanel)
        await pilot.press("4")
        first = Event(8, T0 + 8, "leftovers_removed", None, "cleaned up after a crash: trial 3's tmp dir")
        await post(pilot, [first, Event(9, T0 + 9, "started", 1, "trial 1 started (event 9)")])
        await post(pilot, [dataclasses.replace(first, seq=12)])
        text = "\n".join(line.text for line in panel.lines)
        assert text.count("cleaned up after a crash") == 1 and len(panel.events) == 9
