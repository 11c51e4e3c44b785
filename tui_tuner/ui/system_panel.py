"""GPU/system panel: bars from the sampler's latest sample plus per-trial peak memory."""

from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.widgets import Static

from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.engine.system import SystemSample
from tui_tuner.format import fmt_bytes


def bar(fraction: float, width: int) -> Text:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "grey30"))


def system_text(sample: SystemSample | None, snap: SweepSnapshot | None, width: int) -> Text:
    t = Text()
    bw = max(8, min(40, width - 30))
    if sample is None:
        t.append("sampling…\n", style="dim")
    else:
        for g in sample.gpus:
            t.append(f"GPU{g.index} {g.name}\n", style="bold")
            frac = g.mem_used / g.mem_total if g.mem_total else 0.0
            t.append(" mem  ").append(bar(frac, bw)).append(f" {fmt_bytes(g.mem_used)}/{fmt_bytes(g.mem_total)}\n")
            if g.util is not None:
                t.append(" util ").append(bar(g.util / 100, bw)).append(f" {g.util:3.0f}%\n")
            extras = []
            if g.temperature is not None:
                extras.append(f"{g.temperature:.0f}°C")
            if g.power_w is not None:
                extras.append(f"{g.power_w:.0f}W" + (f"/{g.power_limit_w:.0f}W" if g.power_limit_w else ""))
            if extras:
                t.append("      " + "  ".join(extras) + "\n")
        if sample.reason:
            t.append(sample.reason + "\n", style="yellow")
        t.append(" CPU  ").append(bar(sample.cpu_percent / 100, bw)).append(f" {sample.cpu_percent:3.0f}%\n")
        frac = sample.ram_used / sample.ram_total if sample.ram_total else 0.0
        ram = f" {fmt_bytes(sample.ram_used)}/{fmt_bytes(sample.ram_total)}\n"
        t.append(" RAM  ").append(bar(frac, bw)).append(ram)
    if snap is not None and snap.gpus:
        t.append("placement", style="bold").append("  free memory trials are placed by\n", style="dim")
        for g in snap.gpus:
            on = " ".join(f"#{n}" for n in g.trials) or "-"
            t.append(f" cuda:{g.index} free {fmt_bytes(g.free):>6}/{fmt_bytes(g.total):<6}"
                     f" other procs {fmt_bytes(g.foreign):>6}  trials {on}\n")
        for x in snap.trials:
            if x.wait_reason:
                t.append(f" #{x.number} {x.wait_reason}\n", style="yellow")
    if snap is not None:
        active = [x for x in snap.trials if x.peak_mem_bytes is not None and x.state in ("running", "paused")]
        if active:
            t.append("memory per trial", style="bold").append("  own: weights+grads+optimizer\n", style="dim")
            sharing = Counter(x.device for x in active)
            for x in active:
                where = "GPU peak" if x.device.startswith("cuda") else "process RSS"
                t.append(f" #{x.number:<3} {x.state:<8} own {fmt_bytes(x.own_mem_bytes):>7}"
                         f"  {where} {fmt_bytes(x.peak_mem_bytes):>7}")
                if sharing[x.device] > 1:  # torch keeps one allocator per GPU: its peak is not one trial's
                    t.append(f" shared by {sharing[x.device]} on {x.device or '?'}", style="dim")
                t.append("\n")
    t.rstrip()
    return t


class SystemPanel(Static):
    """Re-rendered when the sample or the memory figures changed."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._last = ""

    def show(self, sample: SystemSample | None, snap: SweepSnapshot | None) -> None:
        text = system_text(sample, snap, self.size.width or 80)
        if text.plain != self._last:
            self._last = text.plain
            self.update(text, layout=False)  # the panel's size comes from the layout, not its text
