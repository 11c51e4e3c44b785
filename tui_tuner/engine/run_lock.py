"""An exclusive lock on a run directory, so a second process cannot drive (resume) a run that is alive."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunDirLockedError(ValueError):
    """Another live process holds the run directory (a ValueError: the CLI prints user errors in one line)."""


class RunDirLock:
    """flock(2) on the run dir's lock file: the kernel drops it when the holder dies, even by SIGKILL, so a crashed
    run can be resumed at once while a live one cannot be resumed twice."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> RunDirLock:
        """Lock `path` (RunDir.lock) or raise RunDirLockedError naming the holder's pid."""
        run_dir = path.parent
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirLockedError(f"{run_dir} is in use by a running tui-tuner (pid {holder}): "
                                    "stop it first, or use another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
