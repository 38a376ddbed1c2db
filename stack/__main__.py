"""Command line: `python -m stack demo` runs the stack on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stack.banner import demo_banner
from stack.config import load_config
from stack.layout import Layout
from stack.process import StackError
from stack.stack import Stack

log = logging.getLogger("stack")

__all__ = ["LogFollower", "demo_banner", "main", "run_demo"]

POLL_S = 1.0


class LogFollower:
    """The lines appended to a log file since it was opened or last read (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._offset = path.stat().st_size  # what the file holds already is not news
        except OSError:
            self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        """Lines written since the previous call; none while the file does not exist."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except OSError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return [line.decode(errors="replace") for line in lines]


def run_demo(stack: Stack) -> int:
    """Start the stack, print the banner, wait for Ctrl-C; 1 if a service dies first.

    While it waits, the alerts that the local webhook receiver prints are echoed here.
    """
    with stack as info:
        print(demo_banner(info), flush=True)
        receiver_log = Layout(info.workdir).log("receiver")
        followers = [LogFollower(receiver_log)] if info.receiver_url is not None else []
        while not (exited := stack.exited()):
            for follower in followers:
                for line in follower.new_lines():
                    print(f"alert: {line}", flush=True)
            time.sleep(POLL_S)
        for name, returncode in exited.items():
            log.error(
                "%s exited on its own with status %d; see %s/logs", name, returncode, info.workdir
            )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m stack`."""
    config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    # Ctrl-C (SIGINT) stops the stack even when a shell started it in the background, which
    # would otherwise leave SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_demo(Stack(config.stack))
    except StackError as error:
        log.error("%s", error)
        return 1
    except KeyboardInterrupt:
        log.info("stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
