"""The work directory's lock: exclusive, removed on a clean stop, taken over after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stack.lock import WorkdirLock, lock_path_for
from stack.process import StackError


def test_a_clean_stop_removes_the_lock_file(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with WorkdirLock(workdir) as lock:
        assert lock.path == lock_path_for(workdir) == tmp_path / "demo.lock"
        assert lock.path.read_text() == f"{os.getpid()}\n"
    assert not lock_path_for(workdir).exists()
    with WorkdirLock(workdir):  # and the next stack locks it again
        assert lock_path_for(workdir).exists()
    assert not lock_path_for(workdir).exists()


def test_a_stop_by_exception_removes_the_lock_file(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt), WorkdirLock(workdir):
        raise KeyboardInterrupt
    assert not lock_path_for(workdir).exists()


def test_a_refused_second_lock_leaves_the_holders_file(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with WorkdirLock(workdir):
        with pytest.raises(StackError, match=rf"already running .* \(pid {os.getpid()},"):
            WorkdirLock(workdir).__enter__()
        assert lock_path_for(workdir).read_text() == f"{os.getpid()}\n"
    assert not lock_path_for(workdir).exists()


def test_the_lock_file_of_a_crashed_stack_is_taken_over(tmp_path: Path) -> None:
    """A holder killed with SIGKILL cannot remove its file; the kernel drops its lock, so the
    next stack takes the stale file over (and removes it when it stops)."""
    workdir = tmp_path / "demo"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from stack.lock import WorkdirLock
        with WorkdirLock(Path({str(workdir)!r})):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", holder], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(StackError, match=rf"pid {process.pid},"):
            WorkdirLock(workdir).__enter__()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    stale = lock_path_for(workdir)
    assert stale.read_text() == f"{process.pid}\n", "a crash leaves the file behind"
    with WorkdirLock(workdir):
        assert stale.read_text() == f"{os.getpid()}\n"
    assert not stale.exists()


def test_a_lock_on_a_file_removed_meanwhile_starts_again_on_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The removal race: B opens the lock file, A stops and removes it, B locks the removed
    file. B must notice and lock the file at the path instead, or a third stack C would get a
    lock of its own while B runs."""
    workdir = tmp_path / "demo"
    path = lock_path_for(workdir)
    first = WorkdirLock(workdir).__enter__()
    opened_before_removal = os.open(path, os.O_RDWR)
    first.__exit__(None, None, None)
    assert not path.exists()

    real_open = os.open
    calls: list[str] = []

    def open_once_stale(name: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        calls.append(os.fspath(name))
        if len(calls) == 1:
            return os.dup(opened_before_removal)
        return real_open(name, flags, mode)

    second = WorkdirLock(workdir)
    with monkeypatch.context() as patched:
        patched.setattr(os, "open", open_once_stale)
        second.__enter__()
    os.close(opened_before_removal)
    try:
        assert calls == [str(path), str(path)]
        assert path.read_text() == f"{os.getpid()}\n"
        with pytest.raises(StackError, match="already running"):
            WorkdirLock(workdir).__enter__()
    finally:
        second.__exit__(None, None, None)
    assert not path.exists()
