"""An exclusive lock on a run directory, so a second process cannot drive (resume) a run that is alive."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunDirLockedError(ValueError):
    """Another live process holds the run directory (a ValueError: the CLI prints user errors in one line)."""


class RunDirLock:
    """flock(2) on the run directory itself: the kernel drops it when the holder dies, even by SIGKILL, so a
    crashed run can be resumed at once while a live one cannot be resumed twice. The directory, not a file in it:
    a deleted lock file would let a second process lock a new one. `.lock` only tells the holder's pid."""

    def __init__(self, fd: int):
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> RunDirLock:
        """Lock `path` (RunDir.lock) or raise RunDirLockedError naming the holder's pid."""
        run_dir = path.parent
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = path.read_text(errors="replace").strip()[:32] or "another process"
            except OSError:
                holder = "another process"
            raise RunDirLockedError(f"{run_dir} is in use by a running tui-tuner (pid {holder}): "
                                    f"attach to it (tui-tuner attach {run_dir}), stop it first, or use another "
                                    "--run-dir") from None
        try:
            path.write_text(str(os.getpid()))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
