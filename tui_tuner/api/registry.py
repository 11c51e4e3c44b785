"""Where a user's live engines announce themselves (for `tui-tuner ls`), and where a socket goes whose run-dir
path is too long for AF_UNIX. One private directory per user: $XDG_RUNTIME_DIR/tui-tuner, else /tmp."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

# sun_path holds 108 bytes on Linux (104 on macOS), NUL included: a longer run-dir path cannot be bound.
MAX_SOCKET_PATH = 100


class RegistryError(OSError):
    """The runtime directory is unusable or not private (another user could reach the sockets in it)."""


def runtime_dir() -> Path:
    """The private directory (created 0700; refused if another user owns it or others can enter it)."""
    if env := os.environ.get("TUI_TUNER_RUNTIME_DIR"):  # tests, and users who want it elsewhere
        path = Path(env)
    elif (xdg := os.environ.get("XDG_RUNTIME_DIR")) and os.access(xdg, os.W_OK):
        path = Path(xdg) / "tui-tuner"
    else:
        path = Path(tempfile.gettempdir()) / f"tui-tuner-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RegistryError(f"{path}: not a private directory of this user (want mode 0700, owner uid "
                            f"{os.getuid()}); remove it or set TUI_TUNER_RUNTIME_DIR")
    return path


def socket_path_for(run_dir: Path, pid: int) -> Path:
    """Where to bind: `<run_dir>/control.sock` when that path fits in sun_path, else in the runtime dir (and
    control.sock is made a symlink to it)."""
    direct = run_dir.absolute() / "control.sock"
    if len(os.fsencode(direct)) <= MAX_SOCKET_PATH:
        return direct
    return runtime_dir() / f"{pid}.sock"


def connect_path(run_dir_socket: Path) -> Path:
    """The path a client connects to: control.sock, or what it links to when the real socket is elsewhere."""
    return Path(os.path.realpath(run_dir_socket)) if run_dir_socket.is_symlink() else run_dir_socket


def register(pid: int, run_dir: Path, socket_path: Path, listen: str | None) -> Path:
    entry = runtime_dir() / f"{pid}.json"
    tmp = entry.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "run_dir": str(run_dir.absolute()), "socket": str(socket_path),
                               "listen": listen}))
    tmp.replace(entry)
    return entry


def entries() -> list[dict[str, Any]]:
    """Every announcement whose process is alive; those of dead processes (a kill -9) are removed."""
    try:
        files = sorted(runtime_dir().glob("*.json"))
    except RegistryError:
        return []
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid):
            out.append(data)
        else:
            with contextlib.suppress(OSError):
                f.unlink()
            with contextlib.suppress(OSError):
                (f.parent / f"{pid}.sock").unlink()
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reusing the pid: not ours, and not alive for us
        return False
    try:  # a killed engine whose parent has not reaped it yet is a zombie: dead for us
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know
