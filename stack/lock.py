"""An exclusive, non-blocking lock on a work directory, so two stacks never share one.

The lock is an `fcntl.flock` on a file next to the directory (the directory itself is wiped at
start). The kernel drops it when its holder exits, however it exits, so a stale lock file never
blocks anyone. The file holds the holder's PID for the error message and is left in place:
deleting a lock file races with a process that has just opened it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from stack.process import StackError


def lock_path_for(workdir: Path) -> Path:
    """The lock file of `workdir`: `<parent>/<name>.lock`."""
    return workdir.parent / f"{workdir.name}.lock"


class WorkdirLock:
    """Context manager holding the lock of one work directory."""

    def __init__(self, workdir: Path) -> None:
        self.path = lock_path_for(workdir)
        self._workdir = workdir
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StackError(
                f"another stack is already running in {self._workdir} (pid {holder}, lock"
                f" {self.path}); stop it with Ctrl-C or `kill {holder}`, or pass another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
