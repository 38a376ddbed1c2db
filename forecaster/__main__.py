"""`python -m forecaster`: the forecaster service (cycle loop + HTTP surface).

Start-up order keeps the service useful at once: the configuration is validated (exit 2 naming
the key), the persisted snapshot is published (served within seconds, before torch is
imported), the HTTP listener starts, the first cycle serves heuristic forecasts, and the model
loads in the background and takes over when ready. SIGTERM or SIGINT: the listener stops, the
cycle thread is told to stop, the last snapshot is persisted, exit 0. SIGHUP, like `POST
/-/reload`, re-reads the configuration file and the model registry (`_reload`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO

from exporter.snapshot import ServiceState, Snapshot
from forecaster.config import Config, ConfigError, load_config, read_secret
from webcommon.address import is_loopback, split_address
from webcommon.webconfig import WebConfig, WebConfigError, load_web_config

log = logging.getLogger("forecaster")
SHUTDOWN_GRACE_S = 5.0
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})
"""Errors that say the state directory cannot be written: the service starts without it."""


class CycleLoop:
    """Runs `Service.run_cycle` every interval in one thread; persists after each success."""

    def __init__(self, service, interval: float, state_dir: Path | None) -> None:
        self.service = service
        self.interval = interval
        self.state_dir = state_dir
        self.stop = threading.Event()
        self.wake = threading.Event()  # set by a model (re)load: forecast with it at once
        self.thread = threading.Thread(target=self._run, name="forecast-cycle", daemon=True)
        self._persist_errors = 0

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if self.service.run_cycle():
                    self.persist()
            except Exception:  # run_cycle guards itself; this keeps the thread alive regardless
                log.exception("forecast cycle raised")
            self.wake.wait(max(0.0, self.interval - (time.monotonic() - started)))
            self.wake.clear()

    def request(self) -> None:
        """Run the next cycle now (also used to stop the loop without waiting)."""
        self.wake.set()

    def persist(self) -> None:
        """Write the current snapshot (errors are logged and counted, never raised)."""
        if self.state_dir is None or not self.service.snapshot.generated_at:
            return  # nothing forecast yet: keep the previous run's snapshot
        from forecaster.persist import save_snapshot

        try:
            save_snapshot(self.service.snapshot, self.state_dir)
        except OSError as exc:
            self._persist_errors += 1
            self.service.persist_failed()  # exported as forecaster_persist_errors_total
            log.warning("cannot persist the snapshot under %s: %s", self.state_dir, exc.strerror)


def _lock_state_dir(directory: Path) -> IO[str] | None:
    """An exclusive lock on the state directory: a second service on it exits at once.

    A directory the service cannot write (read-only, not its own, full: `NOT_WRITABLE`) does
    not stop the start: one warning and None, no lock; `main` then persists nothing there,
    and the snapshot it holds is still served.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = (directory / "lock").open("a+")
    except OSError as exc:
        if exc.errno not in NOT_WRITABLE:
            raise
        log.warning(
            "state directory %s is not writable (%s): snapshots will not be persisted and "
            "two forecasters cannot be kept apart on it",
            directory,
            exc.strerror,
        )
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SystemExit(f"forecaster: another forecaster is using {directory}") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except OSError as exc:  # a full disk: the lock is held all the same
        log.warning("cannot write the pid to %s: %s", directory / "lock", exc.strerror)
    return handle


def _server(app, host: str, port: int, web: WebConfig | None = None):
    """A uvicorn server that stops on SIGTERM/SIGINT without re-raising the signal, so that
    `main` persists the snapshot and exits 0 (uvicorn itself re-raises it after shutdown)."""
    import uvicorn

    from exporter.websocket import WS_MAX_MESSAGE_BYTES

    class Server(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            signals = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
        **(web.uvicorn_options() if web is not None else {}),
    )
    return Server(config)


def _exit_during_start(signum: int, frame: object) -> None:
    """SIGTERM before the listener is up (e.g. while torch imports): a clean exit 0."""
    raise SystemExit(0)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise


def _publish_persisted(hub, config: Config) -> None:
    """Serve the snapshot of the previous run, if any, before anything heavy is imported."""
    if config.state.dir is None:
        return
    from forecaster.persist import load_snapshot

    snapshot = load_snapshot(config.state.dir)
    if snapshot is not None:
        snapshot = _own_share(snapshot, config.shard.index, config.shard.count)
        state = ServiceState(shard_index=config.shard.index, shard_count=config.shard.count)
        hub.publish(snapshot, state, now=time.time())
        log.info("serving the persisted snapshot of %d instances", len(snapshot.instances))


def _own_share(snapshot: Snapshot, index: int, count: int) -> Snapshot:
    """The persisted snapshot's instances that this shard owns now: after a change of
    `shard.count` another replica owns some of them, and two replicas must never export one
    instance's forecasts (they would collide in Prometheus under `honor_labels`)."""
    from dataclasses import replace
    from types import MappingProxyType

    from forecaster.features import shard_of

    kept = {k: v for k, v in snapshot.instances.items() if shard_of(k, count) == index}
    if len(kept) == len(snapshot.instances):
        return snapshot
    log.info(
        "the persisted snapshot holds %d instances of other shards (shard.count changed): "
        "dropped until the next cycle",
        len(snapshot.instances) - len(kept),
    )
    return replace(snapshot, instances=MappingProxyType(kept))


def build(config: Config, token: str | None, web: WebConfig | None = None):
    """The hub, service, model holder, cycle loop and HTTP app of one forecaster."""
    from exporter.app import build_app
    from exporter.hub import Hub
    from forecaster.service import Service
    from forecaster.serving import ModelHolder
    from forecaster.source import PrometheusSource

    hub = Hub(stale_after=config.cycle.stale_after)
    _publish_persisted(hub, config)
    bearer = read_secret(config.prometheus.bearer_token_file)
    source = PrometheusSource(config.prometheus, token=bearer)
    contract = config.contract()
    holder = ModelHolder(config.model, contract.version)

    def publish(snapshot: Snapshot, state: ServiceState) -> None:
        if not snapshot.generated_at and hub.ready:  # nothing forecast yet: keep what is served
            snapshot = hub.current.snapshot  # (the persisted snapshot, if any)
        hub.publish(snapshot, state, now=time.time())

    service = Service(config, source, holder, publish)
    loop = CycleLoop(service, config.cycle.interval, config.state.dir)
    holder.on_change = lambda _model: loop.request()
    app = build_app(
        hub,
        ingest=service.ingest,
        reload=partial(_reload, service, holder, loop),
        token=token,
        max_body_bytes=config.web.max_body_bytes,
        ws_max_clients=config.web.ws_max_clients,
        ws_queue=config.web.ws_queue,
        stale_after=config.cycle.stale_after,
    )
    if web is not None:
        web.install(app, token)  # basic auth outermost: every route and /ws
    return hub, service, holder, loop, app


def _reload(service, holder, loop: CycleLoop) -> None:
    """`POST /-/reload` and SIGHUP: re-read the model registry and the configuration, as
    Prometheus re-reads its file (the flags and environment of the start, the file as it is
    now).

    An invalid configuration keeps the running one: one log line, the state published with
    `forecaster_config_last_reload_successful` 0, and `ReloadError` (`POST /-/reload`: 500).
    A valid one is applied between two cycles (`Service.reconfigure`): settings that need a
    restart keep their running value (one warning names them), the others, the cycle interval
    and the log level included, apply at once, with a cycle run now when anything changed.
    """
    from exporter.app import ReloadError

    holder.reload_now()
    try:
        loaded = service.config.reread()
    except ConfigError as exc:
        log.error("configuration reload failed, keeping the running configuration: %s", exc)
        service.reload_failed()
        raise ReloadError(_reload_reason(exc)) from None
    previous, applied, kept = service.reconfigure(loaded)
    if kept:
        log.warning(
            "configuration reloaded; settings that need a restart keep their running value: %s",
            ", ".join(kept),
        )
    if applied == previous:
        log.info("configuration reloaded: nothing changed")
        return
    if applied.log.level != previous.log.level:
        logging.getLogger().setLevel(applied.log.level.upper())
    loop.interval = applied.cycle.interval
    loop.request()  # the new thresholds and interval from now on, not after a whole interval
    log.info("configuration reloaded: cycle interval %gs", applied.cycle.interval)


def _reload_reason(exc: ConfigError) -> str:
    """What `POST /-/reload` answers for an invalid configuration (no path: the log has it)."""
    if exc.key == "config.file":  # the message names the file
        return "config.file: cannot read or parse the configuration file (see the log)"
    return f"invalid configuration, the running one is kept: {exc}"


def _in_background(reload: Callable[[], None]) -> Callable[[int, object], None]:
    """A signal handler running `reload` in a thread of its own: the handler runs on the main
    thread, which serves HTTP, and a reload waits for a cycle in progress. A failed reload has
    logged why already."""

    def run() -> None:
        from exporter.app import ReloadError

        with suppress(ReloadError):
            reload()

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=run, name="config-reload", daemon=True).start()

    return handler


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the service until SIGTERM/SIGINT; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = load_config(argv, os.environ if environ is None else environ)
        host, port = split_address(config.web.listen_address)
        token = read_secret(config.web.token_file)
        web = load_web_config(config.web.config_file)
        config.contract()
        config.targets(config.contract())
    except (ConfigError, WebConfigError) as exc:
        print(f"forecaster: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(host) and token is None and not web.requires_credentials:
        print(
            f"forecaster: refusing to listen on {config.web.listen_address} without "
            "credentials: set --web.token-file, a --web.config.file with basic_auth_users or "
            "RequireAndVerifyClientCert, or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    if "--check-config" in argv:
        print("forecaster: configuration is valid")
        return 0
    _configure_logging(config.log.level)
    signal.signal(signal.SIGTERM, _exit_during_start)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the service exists to reload
    lock = _lock_state_dir(config.state.dir) if config.state.dir is not None else None
    _hub, service, holder, loop, app = build(config, token, web)
    if lock is None:  # no state directory, or one it cannot write: nothing is persisted
        loop.state_dir = None
    signal.signal(signal.SIGHUP, _in_background(partial(_reload, service, holder, loop)))
    server = _server(app, host, port, web)
    loop.thread.start()
    holder.start()
    log.info(
        "forecaster listening on %s:%d, source %s, shard %d/%d",
        host,
        port,
        config.prometheus.url,
        config.shard.index,
        config.shard.count,
    )
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already shutting down
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        loop.stop.set()
        loop.request()
        holder.stop(timeout=1.0)
        loop.thread.join(SHUTDOWN_GRACE_S)
        loop.persist()
        if lock is not None:
            with suppress(OSError):
                lock.close()
    log.info("forecaster stopped")
    return 1 if not server.started else 0


if __name__ == "__main__":
    sys.exit(main())
