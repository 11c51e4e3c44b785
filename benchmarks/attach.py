"""What attached clients cost the engine, and how fast one client's command shows in another.

The engine (a real sweep of the tiny model, 16 trials at once, 10k steps each) serves its control API in this
process; 3 client processes attach with RemoteSweep at 2 Hz and fetch a chart's series every 2 s, as the app
does. Printed, all measured in this one run:
  - serving cost: CPU time of the API's thread ÷ CPU time of the training threads, while the clients poll;
  - throughput with 3 clients ÷ without (trial steps per second of the whole sweep);
  - lag: a pause/resume sent by one client → seen by another client's listener (p50 / p95 over N commands);
  - payload: bytes of one snapshot reply (full, and the delta a client asks for) and of one series reply.

    python benchmarks/attach.py [--trials 16] [--seconds 20] [--commands 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def preset(trials: int):  # type: ignore[no-untyped-def]
    from tui_tuner import Preset

    return Preset.from_dict({
        "name": "attach-bench", "model": {"name": "builtin:tiny-llama"},
        "data": {"train": "builtin:progressions", "max_length": 48},
        "params": {"max_steps": 10_000, "batch_size": 8, "eval_interval": 500, "learning_rate": 3e-3},
        "search": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "study": {"n_trials": trials, "concurrency": trials, "pruner": "none"},
        "checkpoints": {"interval": 5000},
    })


def client_main(run_dir: str, seconds: float) -> None:
    """One attached client: the app's reads at its pace (snapshot 2 Hz, a series every 2 s)."""
    from tui_tuner.api.client import RemoteSweep

    remote = RemoteSweep(run_dir, refresh_s=0.5)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        snap = remote.snapshot()
        if n % 4 == 0 and snap.trials:
            remote.series(snap.trials[n % len(snap.trials)].number, "loss", 200)
        n += 1
        time.sleep(0.5)
    remote.close()


def thread_cpu(names: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds per thread-name prefix, from /proc (Linux): the API's thread vs the trials' threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(names, 0.0)
    for t in threading.enumerate():
        prefix = next((p for p in names if t.name.startswith(p)), None)
        if prefix is None or t.native_id is None:
            continue
        try:
            fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[prefix] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def total_steps(sweep) -> int:  # type: ignore[no-untyped-def]
    return sum(t.step for t in sweep.snapshot().trials)


def measure_window(sweep, seconds: float) -> tuple[float, dict[str, float]]:  # type: ignore[no-untyped-def]
    names = ("tui-tuner-api", "trial-")
    c0, s0, t0 = thread_cpu(names), total_steps(sweep), time.monotonic()
    time.sleep(seconds)
    c1, s1, t1 = thread_cpu(names), total_steps(sweep), time.monotonic()
    return (s1 - s0) / (t1 - t0), {k: c1[k] - c0[k] for k in names}


def lag(run_dir: Path, trial: int, commands: int) -> tuple[list[float], list[float]]:
    """(command -> the other client's snapshot shows it was asked for, command -> the other client hears the
    trial acted on it at its step boundary), one pause or resume at a time."""
    from tui_tuner.api.client import RemoteSweep

    a, b = RemoteSweep(run_dir, refresh_s=0.5), RemoteSweep(run_dir, refresh_s=0.5)
    seen: dict[str, threading.Event] = {"paused": threading.Event(), "resumed": threading.Event()}
    b.subscribe(lambda ev: seen[ev.kind].set() if ev.kind in seen and ev.trial == trial else None)
    asked, acted = [], []
    for i in range(commands):
        kind = "paused" if i % 2 == 0 else "resumed"
        seen[kind].clear()
        t0 = time.monotonic()
        (a.pause if kind == "paused" else a.resume_trial)(trial)
        want = kind == "paused"
        while next(t for t in b.snapshot().trials if t.number == trial).pause_requested != want:
            if time.monotonic() - t0 > 30:
                raise SystemExit(f"command {i} ({kind}) never reached the other client")
            time.sleep(0.002)
        asked.append(time.monotonic() - t0)
        if not seen[kind].wait(30):
            raise SystemExit(f"command {i} ({kind}): the other client never heard the trial act on it")
        acted.append(time.monotonic() - t0)
        time.sleep(0.2)
    a.close()
    b.close()
    return asked, acted


def pcts(xs: list[float]) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return f"p50 {1000 * statistics.median(xs):.0f} ms, p95 {1000 * p95:.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--commands", type=int, default=20)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args.client, args.seconds)
        return
    import tui_tuner.api.server as server_mod
    from tui_tuner import Sweep
    from tui_tuner.api.client import ApiClient
    from tui_tuner.api.server import ApiServer

    requests = {"n": 0}
    make_app = server_mod.make_app

    def counting(api):  # type: ignore[no-untyped-def]
        app = make_app(api)

        async def counted(scope, receive, send):  # type: ignore[no-untyped-def]
            requests["n"] += scope["type"] == "http"
            await app(scope, receive, send)

        return counted

    server_mod.make_app = counting  # type: ignore[assignment]
    run_dir = Path(tempfile.mkdtemp(prefix="attach-bench-")) / "run"
    sweep = Sweep(preset(args.trials), run_dir)
    sweep.claim()
    server = ApiServer(sweep).start()
    sweep.start()
    while sum(t.state == "running" and t.step > 5 for t in sweep.snapshot().trials) < args.trials:
        time.sleep(0.5)
    print(f"{args.trials} trials training (tiny Llama, CPU, {os.cpu_count()} cores); windows of {args.seconds:g}s")
    base_rate, _ = measure_window(sweep, args.seconds)
    clients = [subprocess.Popen([sys.executable, __file__, "--client", str(run_dir), "--seconds",
                                 str(args.seconds + 6)]) for _ in range(3)]
    time.sleep(3)  # connected and polling
    n0 = requests["n"]
    rate, cpu = measure_window(sweep, args.seconds)
    per_s = (requests["n"] - n0) / args.seconds
    for c in clients:
        c.wait()
    share = cpu["tui-tuner-api"] / max(cpu["trial-"], 1e-9)
    print(f"serving 3 clients at 2 Hz: API thread {cpu['tui-tuner-api']:.2f} s CPU vs trials {cpu['trial-']:.1f} s"
          f" = {100 * share:.2f} % of the training threads' time (goal <= 1 %); {per_s:.1f} requests/s, "
          f"{1000 * cpu['tui-tuner-api'] / max(per_s * args.seconds, 1):.2f} ms CPU each")
    print(f"throughput with 3 clients / without: {rate:.1f} / {base_rate:.1f} steps/s = {rate / base_rate:.3f}")
    step_s = args.trials / max(rate, 1e-9)
    asked, acted = lag(run_dir, sweep.snapshot().trials[0].number, args.commands)
    print(f"a pause/resume in one client -> in another client's snapshot: {pcts(asked)} over {len(asked)} "
          f"commands (goal p95 <= 500 ms)")
    print(f"  -> the trial acting on it, heard by the other client: {pcts(acted)} (this waits for the trial's "
          f"next step boundary; a step takes {1000 * step_s:.0f} ms here, 16 trials sharing 2 cores)")
    c = ApiClient(run_dir)
    snap = c.request("GET", "/snapshot")
    known = ",".join(f"{t['number']}.{t['version']}" for t in snap["trials"])
    full = len(json.dumps(snap))
    delta = len(json.dumps(c.request("GET", "/snapshot", params={"known": known})))
    series = len(json.dumps(c.request("GET", f"/trials/{snap['trials'][0]['number']}/series",
                                      params={"max_points": 200})))
    c.close()
    print(f"payload per refresh: snapshot {full / 1024:.1f} KiB full, {delta / 1024:.1f} KiB as a delta (trials "
          f"that moved since the client's last copy), a 200-point series {series / 1024:.1f} KiB; "
          f"at 2 Hz ≈ {(2 * delta + series / 2) / 1024:.1f} KiB/s per client")
    sweep.stop()
    server.close()


if __name__ == "__main__":
    main()
