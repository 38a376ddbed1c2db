"""`python -m training.retrain`: scheduled retraining behind a backtest gate, its own /metrics.

Every `--interval` (default 7d; also `POST /retrain`) one run pulls the last `--history` (14d)
from Prometheus (or `--data` parquet), trains a candidate in a child `python -m training.train`
(niced, `--threads` torch/BLAS threads, timed out after `--max-minutes` + 5 min), backtests
candidate and current model on the latest `--holdout` (1d: origins every 2h, 9 of them) and
promotes the candidate only if it passes the gate (`training.gates`); otherwise the current
model stays and the reasons go to `<models>/<candidate>/gate.json` and
`<models>/retrain-report.json`. The first scheduled run is one interval after the last
recorded run; with none recorded, the first starts as soon as Prometheus holds
`--first-run-after` of history (7d; probed hourly with one coarse query, from start-up on),
or one interval after start-up with `--first-run-after 0s`.

`--once`: one run now, no listener; exit 0 promoted, 1 rejected or failed, 2 bad configuration.
Service mode: uvicorn serves `/metrics`, `/status`, `POST /retrain` (409 while a run is in
progress) and `POST /rollback` on `--web.listen-address` (127.0.0.1:9466); a non-loopback
address needs `--web.token-file`. SIGTERM/SIGINT: the scheduler stops, the child trainer is
terminated and its staging removed, exit 0 within 10 s. The whole process runs at `--nice`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from forecaster.config import ConfigError, read_secret
from training.retrain.config import RetrainConfig, load_config
from webcommon.address import is_loopback, split_address
from webcommon.webconfig import WebConfig, WebConfigError, load_web_config

log = logging.getLogger("training.retrain")
STARTUP_DELAY_S = 10.0
PROBE_INTERVAL_S = 3600.0  # how often the first run's history probe looks again
STOP_TIMEOUT_S = 7.0


def first_run(now: float, interval: float, last_run: float | None) -> float:
    """When the first scheduled run starts: one interval after the last run, not in the past."""
    if last_run is None or last_run <= 0:
        return now + interval
    return max(now + STARTUP_DELAY_S, last_run + interval)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
        stream=sys.stderr,
    )
    # sklearn warns once per sample that pytorch-forecasting scales arrays without names.
    import warnings

    warnings.filterwarnings("ignore", message="X does not have valid feature names")


def serve(config: RetrainConfig, retrainer, token: str | None, web: WebConfig | None = None) -> int:
    """Scheduler + HTTP listener until SIGTERM/SIGINT."""
    import uvicorn
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    from training.retrain.app import build_app

    host, port = split_address(config.web.listen_address)
    start = first_run(time.time(), config.interval, retrainer.last_finished())
    scheduler = BackgroundScheduler(timezone=UTC)
    job = scheduler.add_job(
        retrainer.scheduled,
        IntervalTrigger(seconds=config.interval, start_date=datetime.fromtimestamp(start, UTC)),
        id="retrain",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(config.interval),
    )
    retrainer.next_run = lambda: job.next_run_time.timestamp() if job.next_run_time else None
    if retrainer.first_run_pending():

        def probe() -> None:
            if retrainer.first_run_check() or not retrainer.first_run_pending():
                scheduler.remove_job("first_run_probe")

        scheduler.add_job(
            probe,
            IntervalTrigger(
                seconds=PROBE_INTERVAL_S,
                start_date=datetime.fromtimestamp(time.time() + STARTUP_DELAY_S, UTC),
            ),
            id="first_run_probe",
            max_instances=1,
            coalesce=True,
        )
    if config.shadow.cycles > 0:
        scheduler.add_job(
            retrainer.shadow_cycle,
            IntervalTrigger(seconds=config.shadow.interval),
            id="shadow",
            max_instances=1,
            coalesce=True,
        )
    app = build_app(retrainer, token)
    if web is not None:
        web.install(app, token)  # basic auth outermost, as the forecaster's
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            **(web.uvicorn_options() if web is not None else {}),
        )
    )
    scheduler.start()
    log.info(
        "retrainer listening on %s:%d, every %ss, first run %s",
        host,
        port,
        int(config.interval),
        datetime.fromtimestamp(start, UTC).isoformat(),
    )
    try:
        server.run()
    finally:
        scheduler.shutdown(wait=False)
        retrainer.stop(timeout=STOP_TIMEOUT_S)
    log.info("retrainer stopped")
    return 0 if server.started else 1


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        config = load_config(argv, environ)
        token = read_secret(config.web.token_file)
        web = load_web_config(config.web.config_file)
        read_secret(config.prometheus.bearer_token_file)
    except (ConfigError, WebConfigError) as exc:
        print(f"retrain: invalid configuration: {exc}", file=sys.stderr)
        return 2
    host, _port = split_address(config.web.listen_address)
    if not config.once and token is None and not is_loopback(host) and not web.requires_credentials:
        print(
            f"retrain: refusing to listen on {config.web.listen_address} without "
            "credentials: set --web.token-file, a --web.config.file with basic_auth_users or "
            "RequireAndVerifyClientCert, or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    _configure_logging(config.log.level)
    from training.retrain.retrainer import Retrainer, lower_priority

    lower_priority(0, config.nice)
    retrainer = Retrainer(config, environ)
    # uvicorn restores and re-raises these after its own graceful shutdown: they only ask the
    # retrainer to stop (SIGTERM to the child), and the clean-up below runs, then exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: retrainer.request_stop())
    retrainer.startup()
    if config.once:
        report = retrainer.run("once")
        return 0 if report["outcome"] == "promoted" else 1
    return serve(config, retrainer, token, web)


if __name__ == "__main__":
    sys.exit(main())
