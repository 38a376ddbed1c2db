"""Process supervision: start children with their own logs, wait for them, stop them, no orphans.

Every child runs in its own session (`start_new_session=True`), so a Ctrl-C in the terminal
reaches only this process, which then stops its children itself: SIGTERM to the child's process
group (the child and its descendants, nothing else), SIGKILL after a deadline. The supervisor
only ever signals processes it started and has not yet reaped.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
KILL_WAIT_S = 5.0
# Signals that end the supervising process: SIGINT raises KeyboardInterrupt already; these raise
# SystemExit while a Supervisor is active. SIGHUP matters because the children, in their own
# sessions, would not get the closing terminal's hangup themselves.
_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_STOP_SIGNALS = {signal.SIGINT, *_EXIT_SIGNALS}
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StackError(RuntimeError):
    """A step of the stack failed; the message says which step and why."""


@dataclass(frozen=True)
class Child:
    """A process started by the supervisor, with the file that holds its output."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """Process id (also the id of its process group and session)."""
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the child's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(log {self.log_path} unreadable: {error})"
        return "\n".join(text.splitlines()[-lines:])


def find_binary(names: Sequence[str], package: str) -> str:
    """Path of the first of `names` on PATH, or an error naming the Debian package to install."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    raise StackError(
        f"{' or '.join(names)} not found on PATH: install the Debian package {package!r}"
        f" (apt-get install {package})"
    )


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_system_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while cleaning up; they are delivered right after."""
    if not _in_main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Supervisor:
    """Starts children and, on leaving its context (normally, by exception, or by SIGINT,
    SIGTERM or SIGHUP), stops every one still running: SIGTERM first, SIGKILL after
    `stop_timeout_s`.
    """

    def __init__(self, stop_timeout_s: float = 10.0) -> None:
        self._stop_timeout_s = stop_timeout_s
        self._children: list[Child] = []
        self._previous_handlers: dict[signal.Signals, _Handler] = {}

    def __enter__(self) -> Supervisor:
        """Turn SIGTERM and SIGHUP into SystemExit (main thread only), so the context is left
        through `__exit__` and the children are stopped."""
        if _in_main_thread():
            for signum in _EXIT_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, _raise_system_exit)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop_all()
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            self._previous_handlers.clear()

    @property
    def children(self) -> tuple[Child, ...]:
        """The children started and not yet stopped, in start order."""
        return tuple(self._children)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
    ) -> Child:
        """Start `argv` in a new session, stdout and stderr appended to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as output:
            process = subprocess.Popen(  # noqa: S603 - argv from stack.plan, no shell
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self._children.append(child)
        log.debug("started %s (pid %d): %s", name, child.pid, " ".join(argv))
        return child

    def run(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        timeout_s: float,
        cwd: Path | None = None,
    ) -> None:
        """Run a one-shot command to completion; raise StackError if it fails or overruns."""
        child = self.start(name, argv, log_path, cwd=cwd)
        try:
            returncode = child.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop([child])
            raise StackError(
                f"{name} did not finish within {timeout_s:g} s; log {log_path}:\n{child.log_tail()}"
            ) from None
        self._children.remove(child)
        if returncode != 0:
            raise StackError(
                f"{name} failed with exit status {returncode}; log {log_path}:\n{child.log_tail()}"
            )

    def stop_all(self) -> None:
        """Stop every child still running, the most recently started first."""
        self.stop(list(reversed(self._children)))

    def stop(self, children: Sequence[Child]) -> None:
        """SIGTERM `children` together, wait up to the deadline, SIGKILL the rest."""
        with _signals_deferred():
            for child in children:
                _signal_group(child, signal.SIGTERM)
            deadline = time.monotonic() + self._stop_timeout_s
            for child in children:
                if not _wait(child, deadline):
                    log.warning("%s (pid %d) ignored SIGTERM; killing it", child.name, child.pid)
                    _signal_group(child, signal.SIGKILL)
                    _wait(child, time.monotonic() + KILL_WAIT_S)
                if child in self._children:
                    self._children.remove(child)
                log.debug("%s (pid %d) exited with %s", child.name, child.pid, child.process.poll())


def _signal_group(child: Child, signum: int) -> None:
    """Signal the child's process group, unless the child has already been reaped."""
    if child.process.poll() is not None:
        return
    with suppress(ProcessLookupError):  # exited since the poll above
        os.killpg(child.pid, signum)


def _wait(child: Child, deadline: float) -> bool:
    """Wait for the child until `deadline` (monotonic); True if it has exited."""
    try:
        child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def wait_until_ready(child: Child, url: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200; fail early, with the child's log, if the child exits."""
    deadline = time.monotonic() + timeout_s
    last_problem = "no answer yet"
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            returncode = child.process.poll()
            if returncode is not None:
                raise StackError(
                    f"{child.name} exited with status {returncode} before it was ready;"
                    f" log {child.log_path}:\n{child.log_tail()}"
                )
            try:
                response = client.get(url)
            except httpx.HTTPError as error:
                last_problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code == 200:
                    return
                last_problem = f"HTTP {response.status_code}"
            time.sleep(POLL_INTERVAL_S)
    raise StackError(
        f"{child.name} not ready at {url} after {timeout_s:g} s ({last_problem});"
        f" log {child.log_path}:\n{child.log_tail()}"
    )
