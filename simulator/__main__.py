"""`python -m simulator serve|history|scenario|incident`: run, export or steer the fleet."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from simulator import schedule as sch
from simulator.config import Config, load_config
from webcommon.address import is_loopback, split_address
from webcommon.webconfig import WebConfigError, load_web_config

log = logging.getLogger("simulator")
# Raw series for backfilling: enough for a day of graphs plus rate windows, not the whole span.
DEFAULT_OPENMETRICS_HOURS = 26.0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    config = load_config(sys.argv[1:] if argv is None else argv, dict(os.environ))
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handlers = {"serve": _serve, "history": _history, "scenario": _scenario, "incident": _incident}
    return handlers[config.command](config)


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    token = path.read_text().strip()
    if not token:
        raise SystemExit(f"--web.token-file {path}: the file is empty")
    return token


def default_epoch(now: float) -> float:
    """Counters start at midnight UTC the day before `now` unless --epoch says otherwise."""
    return float((int(now) // sch.DAY - 1) * sch.DAY)


def _serve(config: Config) -> int:
    import uvicorn

    from simulator.app import build_app
    from simulator.engine import Engine
    from simulator.fleet import build_fleet

    host, port = split_address(config.listen_address)
    token = _read_token(config.token_file)
    try:
        web = load_web_config(config.web_config_file)
    except WebConfigError as exc:  # validated by load_config; changed since
        log.error("%s", exc)
        return 2
    if token is None and not web.requires_credentials and not is_loopback(host):
        log.error(
            "refusing to listen on %s without --web.token-file (or a --web.config.file with "
            "basic_auth_users or RequireAndVerifyClientCert): the scenario and incident "
            "endpoints would be open to the network",
            config.listen_address,
        )
        return 2
    fleet = build_fleet(config.servers, config.seed)
    epoch = config.epoch if config.epoch is not None else default_epoch(time.time())
    engine = Engine(fleet, epoch - epoch % sch.STEP, config.incident_rate)
    if config.scenario != "healthy":
        engine.set_scenario(config.scenario)
    if config.sd_file is not None:
        target = config.sd_target_address or f"{host if host != '0.0.0.0' else '127.0.0.1'}:{port}"  # noqa: S104
        write_targets(config.sd_file, fleet.nodes, fleet.profiles, target)
    log.info(
        "serving %d nodes on %s%s (seed %d, epoch %s)",
        fleet.size,
        config.listen_address,
        " with TLS" if web.tls else "",
        config.seed,
        epoch,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(engine, token, web),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            **web.uvicorn_options(),
        )
    )
    server.run()
    return 0


def write_targets(path: Path, nodes, profiles, address: str) -> None:
    """Write the file_sd groups (one per node, `instance` = node name), atomically."""
    groups = [
        {"targets": [address], "labels": {"instance": n, "__param_node": n, "profile": p}}
        for n, p in zip(nodes, profiles, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(groups, indent=1) + "\n")
    os.replace(tmp, path)


def _history(config: Config) -> int:
    from simulator.fleet import build_fleet
    from simulator.history import HistorySpec, write_history

    end = config.end if config.end is not None else time.time()
    last = int(end // sch.STEP)
    first = last - round(config.days * sch.DAY / sch.STEP)
    epoch = config.epoch if config.epoch is not None else first * sch.STEP
    hours = config.openmetrics_hours
    if hours is None:
        hours = min(config.days * 24, DEFAULT_OPENMETRICS_HOURS)
    spec = HistorySpec(
        first,
        last,
        float(epoch - epoch % sch.STEP),
        config.incident_rate,
        hours,
        int(config.scrape_interval),
        config.job,
        openmetrics_end=end,
    )
    started = time.perf_counter()
    meta = write_history(
        build_fleet(config.servers, config.seed),
        spec,
        config.out,
        ["python", "-m", "simulator", *sys.argv[1:]],
    )
    log.info(
        "wrote %d rows, %d incidents to %s in %.1f s",
        meta["rows"],
        meta["incidents"],
        config.out,
        time.perf_counter() - started,
    )
    return 0


def _post(config: Config, path: str, payload: dict) -> int:
    import ssl

    import httpx

    from webcommon.webconfig import client_ssl_context

    token = _read_token(config.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify: ssl.SSLContext | bool = True
    if config.tls_ca_file or config.tls_cert_file:
        try:
            verify = client_ssl_context(
                config.tls_ca_file, config.tls_cert_file, config.tls_key_file
            )
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot load the TLS files (--tls.*): %s", exc)
            return 2
    try:
        with httpx.Client(verify=verify, timeout=10.0) as client:
            response = client.request(
                "POST",
                config.url.rstrip("/") + path,
                json=payload,
                headers=headers,
                extensions={"sni_hostname": config.tls_server_name}
                if config.tls_server_name
                else {},
            )
    except httpx.HTTPError as exc:
        log.error("cannot reach the simulator at %s: %s", config.url, exc)
        return 1
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:  # an answer that is not JSON (a proxy, basic auth's 401)
        print(f"{response.status_code} {response.text[:500]}")
    return 0 if response.is_success else 1


def _scenario(config: Config) -> int:
    return _post(config, "/scenario/set", {"scenario": config.scenario})


def _incident(config: Config) -> int:
    return _post(
        config,
        "/incident/inject",
        {"node": config.node, "kind": config.kind, "ramp": f"{int(config.ramp)}s"},
    )


if __name__ == "__main__":
    sys.exit(main())
