"""`tui-tuner ctl`, `attach` and `ls`: the control API from the shell, for people, scripts and cron."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tui_tuner.exit_codes import EXIT_BAD_INPUT, EXIT_NOT_RUNNING


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    att = sub.add_parser("attach", help="open the app on a sweep running in the background")
    att.add_argument("target", help="the run directory (or http://127.0.0.1:PORT of a --listen engine)")
    att.add_argument("--token", help="the token a --listen engine printed (or set TUI_TUNER_TOKEN)")

    sub.add_parser("ls", help="the sweeps running on this box")

    ctl = sub.add_parser("ctl", help="send one command to a running sweep (for scripts and cron)")
    ctl.add_argument("target", help="the run directory (or http://127.0.0.1:PORT of a --listen engine)")
    ctl.add_argument("--token", help="the token of a --listen engine (or set TUI_TUNER_TOKEN)")
    verbs = ctl.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for verb, what in (("pause", "pause trial N at its next step"), ("resume", "resume paused trial N"),
                       ("kill", "kill trial N (Optuna: PRUNED), or cancel it if it is queued")):
        verbs.add_parser(verb, help=what).add_argument("trial", type=int, metavar="N")
    verbs.add_parser("concurrency", help="run K trials at a time").add_argument("value", type=int, metavar="K")
    fork = verbs.add_parser("fork", help="fork trial N from a checkpoint with edited params")
    fork.add_argument("trial", type=int, metavar="N")
    fork.add_argument("--step", type=int, help="the checkpoint step (default: the latest, or one written now)")
    enq = verbs.add_parser("enqueue", help="add a trial with these params (it runs next)")
    for p in (fork, enq):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="a param, e.g. --set learning_rate=3e-4 (repeatable)")
    stop = verbs.add_parser("stop", help="every trial checkpoints and stops; the engine exits")
    stop.add_argument("--no-wait", action="store_true", help="return once the engine has the command")
    status = verbs.add_parser("status", help="the progress table (or the whole snapshot with --json)")
    status.add_argument("--json", action="store_true")


def _token(args: argparse.Namespace) -> str | None:
    from tui_tuner.api.client import env_token

    return args.token or env_token()


def _params(overrides: list[str]) -> dict[str, Any]:
    from tui_tuner.engine.errors import SweepError
    from tui_tuner.preset import parse_value

    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set {item!r}: expected key=value (e.g. learning_rate=3e-4)")
        out[key.strip().removeprefix("params.")] = parse_value(value.strip())
    return out


def ctl(args: argparse.Namespace) -> int:
    """One command; its result in one line. Exit 0, 2 (the engine refused it: the line says why), or 3 (nothing
    is running there)."""
    from tui_tuner.api.client import ApiClient, CommandError, NotRunning

    client = ApiClient(args.target, _token(args))
    verb = args.verb
    try:
        if verb in ("pause", "resume", "kill"):
            client.request("POST", f"/trials/{args.trial}/{verb}")
            print({"pause": f"trial #{args.trial}: pause requested (it pauses at its next step)",
                   "resume": f"trial #{args.trial}: resumed",
                   "kill": f"trial #{args.trial}: kill requested"}[verb])
        elif verb == "concurrency":
            got = client.request("PUT", "/concurrency", json={"value": args.value})
            print(f"concurrency {got['concurrency']}")
        elif verb == "fork":
            got = client.request("POST", f"/trials/{args.trial}/fork", timeout=660,
                                 json={"step": args.step, "params": _params(args.overrides)})
            print(f"trial #{got['trial']}: forked from #{args.trial}")
        elif verb == "enqueue":
            got = client.request("POST", "/trials", json={"params": _params(args.overrides)})
            print(f"trial #{got['trial']}: enqueued")
        elif verb == "stop":
            return _stop(client, no_wait=args.no_wait)
        elif verb == "status":
            return _status(client, as_json=args.json)
    except NotRunning as e:
        print(f"tui-tuner: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except CommandError as e:
        print(f"tui-tuner: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        client.close()
    return 0


def _stop(client: Any, no_wait: bool) -> int:
    from tui_tuner.api.client import NotRunning

    client.request("POST", "/stop")
    if no_wait:
        print("stopping: running trials checkpoint and end at their next step")
        return 0
    print("stopping: running trials checkpoint and end at their next step…", flush=True)
    try:
        while True:  # until the engine has exited (its socket goes with it)
            client.request("GET", "/status", timeout=5)
            time.sleep(0.2)
    except NotRunning:
        pass
    where = f"; continue with `tui-tuner resume {client.run_dir}`" if client.run_dir else ""
    print(f"stopped{where}")
    return 0


def _status(client: Any, as_json: bool) -> int:
    from tui_tuner.api.wire import snapshot_from_wire
    from tui_tuner.report import progress_table

    raw = client.request("GET", "/snapshot")
    if as_json:
        print(json.dumps(raw, indent=1, allow_nan=True))
        return 0
    snap = snapshot_from_wire(raw, {})
    print(f"{snap.phase}; {snap.concurrency} at a time; {snap.n_trials} trials budgeted"
          + (f"; halted: {snap.halted}" if snap.halted else ""))
    print(progress_table(snap))
    return 0


def ls() -> int:
    """The live engines of this user on this box, one line each."""
    from tui_tuner.api import registry
    from tui_tuner.api.client import ApiClient, CommandError, NotRunning
    from tui_tuner.format import fmt_loss

    rows = []
    for entry in registry.entries():
        client = ApiClient(entry["run_dir"], timeout=3.0)
        try:
            st = client.request("GET", "/status")
        except NotRunning:
            continue  # it is exiting right now
        except CommandError as e:
            rows.append((_short(entry["run_dir"]), str(entry["pid"]), "not answering", str(e)[:40], "", ""))
            continue
        finally:
            client.close()
        c = st["counts"]
        running = c.get("running", 0) + c.get("starting", 0)
        trials = (f"{running} run, {c.get('paused', 0)} paused, {c.get('complete', 0)} done"
                  f"/{st['n_trials']}" + (f", {c['failed']} failed" if c.get("failed") else ""))
        best = f"{fmt_loss(st['best_value'])} #{st['best_trial']}" if st["best_trial"] is not None else "-"
        rows.append((_short(entry["run_dir"]), str(st["pid"]), st["phase"], trials, best, _uptime(st["uptime"])))
    if not rows:
        print("no sweep is running on this box (for this user)")
        return 0
    head = ("run dir", "pid", "phase", "trials", "best eval", "up")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _short(path: str) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return path


def _uptime(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def attach(args: argparse.Namespace) -> int:
    from tui_tuner.api.client import NotRunning, RemoteSweep
    from tui_tuner.ui.app import run_remote_app

    try:
        remote = RemoteSweep(args.target, _token(args))
    except NotRunning as e:
        print(f"tui-tuner: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    return run_remote_app(remote)
