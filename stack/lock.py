"""An exclusive, non-blocking lock on a work directory, so two stacks never share one.

The lock is an `fcntl.flock` on a file next to the directory (the directory itself is wiped at
start). The kernel drops it when its holder exits, however it exits, so the file a crashed
stack leaves behind never blocks anyone: the next stack locks it and takes it over. The file
holds the holder's PID for the error message. A clean stop removes it, while still holding the
lock; a process that opened the file just before that removal may then lock the removed file,
so every locker checks, once it holds the lock, that the path still names the file it locked,
and otherwise starts again on the new one.
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
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StackError(
                    f"another stack is already running in {self._workdir} (pid {holder}, lock"
                    f" {self.path}); stop it with Ctrl-C or `kill {holder}`, or pass another"
                    " --workdir"
                ) from None
            if self._names(fd):
                break
            os.close(fd)  # its holder removed the file after we opened it: lock the new one
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
            if self._names(self._fd):
                self.path.unlink(missing_ok=True)  # before unlocking: see the module's docstring
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _names(self, fd: int) -> bool:
        """Whether the lock path still names the file open as `fd`."""
        try:
            named = self.path.stat()
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
