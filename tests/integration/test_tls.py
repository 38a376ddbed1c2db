"""TLS and basic auth end to end, on 127.0.0.1 only, with a CA made in tmp_path.

The listener side: real `python -m simulator serve` processes with a `--web.config.file`
(exporter-toolkit's format): https with the test CA and credentials works; plain http, an
unknown CA, a certificate for another name and an expired certificate are refused by a
verifying client; basic auth is required; a client certificate is required where the file
says so. The client side: `PrometheusSource` against a small TLS server in a thread, with
`prometheus.tls_config`: it works with the CA file (and a client certificate), and a wrong
`server_name`, an expired certificate or an unknown CA is a `tls` error, never retried and
never sent in plain HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import httpx
import pytest

from forecaster.config import PrometheusSettings, TLSClientSettings
from forecaster.source import PrometheusSource, SourceError
from stack.ports import pick_free_ports
from tests.tls_certs import Authority, Issued

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "prometheus", "correct horse battery staple"
TOKEN = "simulator-token-0123456789"
START_DEADLINE_S = 30.0


def _basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Listener:
    url: str
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued | Authority]:
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority.make(directory)
    return {
        "ca": ca,
        "server": ca.issue("server"),
        "expired": ca.issue("expired", expired=True),
        "other": ca.issue("other", ("other.example",), ()),
        "client": ca.issue("client", ("prometheus",), (), client=True),
    }


def _web_config(directory: Path, name: str, tls: dict[str, str]) -> Path:
    """A web config file with relative paths (the certificates are copied beside it)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["tls_server_config:"]
    for key, value in tls.items():
        if key.endswith("_file"):
            (directory / Path(value).name).write_bytes(Path(value).read_bytes())
        lines.append(f"  {key}: {Path(value).name if key.endswith('_file') else value}")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    lines += ["basic_auth_users:", f"  {USER}: '{hashed}'"]
    path = directory / f"{name}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start(config: Path, token: Path, port: int) -> subprocess.Popen[bytes]:
    command = [
        *(sys.executable, "-m", "simulator", "serve", "--servers", "2"),
        *("--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(config)),
        *("--web.token-file", str(token)),
    ]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy()
    )


def _stop(process: subprocess.Popen[bytes]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output.decode(errors="replace")


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    """Until the port accepts TCP connections (no TLS check: some certificates are bad)."""
    import socket

    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the simulator exited {process.returncode}: {_stop(process)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the simulator did not listen on {port} within {START_DEADLINE_S} s")


@pytest.fixture(scope="module")
def listeners(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Listener]]:
    """Three simulators: `good` (TLS, basic auth, token), `expired` (an expired certificate),
    `mtls` (a certificate for other.example only, client certificates required)."""
    directory = tmp_path_factory.mktemp("web")
    token = directory / "token"
    token.write_text(TOKEN + "\n")
    ca = pki["ca"]
    configs = {
        "good": {"cert_file": pki["server"].cert, "key_file": pki["server"].key},
        "expired": {"cert_file": pki["expired"].cert, "key_file": pki["expired"].key},
        "mtls": {
            "cert_file": pki["other"].cert,
            "key_file": pki["other"].key,
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": ca.cert,
            "min_version": "TLS12",
        },
    }
    ports = pick_free_ports(len(configs))
    started: dict[str, Listener] = {}
    try:
        for (name, tls), port in zip(configs.items(), ports, strict=True):
            config = _web_config(directory / name, name, {k: str(v) for k, v in tls.items()})
            started[name] = Listener(f"https://127.0.0.1:{port}", _start(config, token, port))
        for listener, port in zip(started.values(), ports, strict=True):
            _wait_listening(listener.process, port)
        yield started
    finally:
        outputs = {name: _stop(listener.process) for name, listener in started.items()}
        for name, output in outputs.items():
            assert "Traceback" not in output, f"{name}: {output}"


def _verifying(pki, **options) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"].cert)), **options)


@pytest.mark.slow
@pytest.mark.fault("H3")
def test_https_with_the_test_ca_and_credentials_works(listeners, pki):
    url = listeners["good"].url
    with _verifying(pki, timeout=5.0) as client:
        answer = client.get(url + "/metrics", headers=_basic())
        assert answer.status_code == 200, answer.text
        assert "simulator_fleet_size 2.0" in answer.text
        bearer = client.get(url + "/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200


@pytest.mark.slow
@pytest.mark.fault("H3")
def test_basic_auth_is_required(listeners, pki):
    url = listeners["good"].url
    with _verifying(pki, timeout=5.0) as client:
        for headers in ({}, _basic(password="wrong"), _basic(user="nobody")):
            answer = client.get(url + "/-/healthy", headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == "Basic"
        # basic auth admits reading; the mutating routes still need the token
        change = client.post(url + "/scenario/set", json={"scenario": "healthy"}, headers=_basic())
        assert change.status_code == 401
        token = {"Authorization": f"Bearer {TOKEN}"}
        change = client.post(url + "/scenario/set", json={"scenario": "healthy"}, headers=token)
        assert change.status_code == 200


@pytest.mark.slow
@pytest.mark.fault("H3")
def test_plain_http_to_the_tls_listener_fails(listeners):
    plain = listeners["good"].url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/-/healthy", headers=_basic(), timeout=5.0)


@pytest.mark.slow
def test_an_unknown_ca_is_refused(listeners):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(listeners["good"].url + "/-/healthy", headers=_basic(), timeout=5.0)


@pytest.mark.slow
def test_a_certificate_for_another_name_is_refused(listeners, pki):
    client_cert = pki["client"]
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    context.load_cert_chain(client_cert.cert, client_cert.key)
    with (
        httpx.Client(verify=context, timeout=5.0) as client,
        pytest.raises(httpx.ConnectError, match="mismatch"),
    ):
        client.get(listeners["mtls"].url + "/-/healthy", headers=_basic())


@pytest.mark.slow
def test_an_expired_certificate_is_refused(listeners, pki):
    with _verifying(pki, timeout=5.0) as client, pytest.raises(httpx.ConnectError, match="expired"):
        client.get(listeners["expired"].url + "/-/healthy", headers=_basic())


@pytest.mark.slow
@pytest.mark.fault("H3")
def test_a_client_certificate_is_required_where_the_file_says_so(listeners, pki):
    url = listeners["mtls"].url + "/-/healthy"
    sni = {"sni_hostname": "other.example"}  # the name the server's certificate carries
    context = ssl.create_default_context(cafile=str(pki["ca"].cert))
    context.load_cert_chain(pki["client"].cert, pki["client"].key)
    with httpx.Client(verify=context, timeout=5.0) as client:
        assert client.get(url, headers=_basic(), extensions=sni).status_code == 200
    with _verifying(pki, timeout=5.0) as client, pytest.raises(httpx.HTTPError):
        client.get(url, headers=_basic(), extensions=sni)


def _steer(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulator", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.fault("H3")
def test_the_scenario_and_incident_commands_reach_a_tls_simulator_with_the_ca(
    listeners, pki, tmp_path
):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    url = listeners["good"].url
    common = ("--url", url, "--web.token-file", str(token))
    done = _steer("scenario", "healthy", *common, "--tls.ca-file", str(pki["ca"].cert))
    assert done.returncode == 0, done.stderr
    assert '"scenario": "healthy"' in done.stdout
    unverified = _steer("scenario", "healthy", *common)  # the system's CAs do not know ours
    assert unverified.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    missing = _steer("scenario", "healthy", *common, "--tls.ca-file", str(tmp_path / "none"))
    assert missing.returncode == 2 and "cannot load the TLS files" in missing.stderr
    for result in (done, unverified, missing):
        assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_the_steering_commands_send_a_client_certificate_and_check_the_server_name(listeners, pki):
    mtls = ("--url", listeners["mtls"].url, "--tls.ca-file", str(pki["ca"].cert))
    client = ("--tls.cert-file", str(pki["client"].cert), "--tls.key-file", str(pki["client"].key))
    named = ("--tls.server-name", "other.example")  # the name its certificate carries
    done = _steer("scenario", "healthy", *mtls, *client, *named)
    # the mutating route then wants the token: the TLS handshake, client certificate included,
    # went through, and the simulator answered
    assert done.returncode == 1 and '"error": "unauthorized"' in done.stdout, done.stderr
    without_certificate = _steer("scenario", "healthy", *mtls, *named)
    assert without_certificate.returncode == 1
    assert "cannot reach the simulator" in without_certificate.stderr
    wrong_name = _steer("scenario", "healthy", *mtls, *client)  # 127.0.0.1 is not its name
    assert wrong_name.returncode == 1 and "certificate" in wrong_name.stderr.lower()
    half = _steer("scenario", "healthy", *mtls, client[0], client[1])
    assert half.returncode == 2 and "--tls.cert-file and --tls.key-file" in half.stderr


def test_a_bad_web_config_file_exits_2_without_a_traceback(tmp_path):
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  cert_file: absent.crt\n  key_file: absent.key\n")
    result = subprocess.run(
        [sys.executable, "-m", "simulator", "serve", "--web.config.file", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "tls_server_config.cert_file: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


# --- the forecaster's client side ---------------------------------------------------------------

NOW = 1_795_305_600.0


class _Prometheus(BaseHTTPRequestHandler):
    """Answers every GET as Prometheus answers `time()`; counts the requests it served."""

    served: list[str]

    def do_GET(self) -> None:
        self.served.append(self.path)
        body = json.dumps(
            {"status": "success", "data": {"resultType": "scalar", "result": [NOW, str(NOW)]}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def tls_server(issued: Issued, client_ca: Path | None = None) -> Iterator[tuple[str, list[str]]]:
    """A TLS server on 127.0.0.1 in a thread: (its https URL, the paths it served)."""
    served: list[str] = []
    handler = type("Handler", (_Prometheus,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert, issued.key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _source(url: str, sleeps: list[float], **tls) -> PrometheusSource:
    settings = PrometheusSettings(
        url=url, timeout=5, retries=3, tls_config=TLSClientSettings(**tls)
    )
    return PrometheusSource(settings, sleep=sleeps.append)


def test_the_source_verifies_prometheus_with_the_ca_file(pki):
    sleeps: list[float] = []
    with (
        tls_server(pki["server"]) as (url, served),
        _source(url, sleeps, ca_file=pki["ca"].cert) as s,
    ):
        assert s.now() == NOW
    assert served and not sleeps


def test_the_source_sends_a_client_certificate(pki):
    sleeps: list[float] = []
    client = pki["client"]
    with tls_server(pki["server"], client_ca=pki["ca"].cert) as (url, served):
        tls = {"ca_file": pki["ca"].cert, "cert_file": client.cert, "key_file": client.key}
        with _source(url, sleeps, **tls) as source:
            assert source.now() == NOW
        with _source(url, sleeps, ca_file=pki["ca"].cert) as source:
            with pytest.raises(SourceError) as caught:
                source.now()
            assert caught.value.reason in ("tls", "connection")
    assert len(served) == 1


def test_server_name_overrides_the_host_the_certificate_must_name(pki):
    sleeps: list[float] = []
    with tls_server(pki["other"]) as (url, served):
        right = {"ca_file": pki["ca"].cert, "server_name": "other.example"}
        with _source(url, sleeps, **right) as source:
            assert source.now() == NOW
        for tls in ({"ca_file": pki["ca"].cert}, {**right, "server_name": "wrong.example"}):
            with _source(url, sleeps, **tls) as source, pytest.raises(SourceError) as caught:
                source.now()
            assert caught.value.reason == "tls", caught.value
    assert len(served) == 1 and not sleeps  # TLS failures are never retried


@pytest.mark.parametrize(
    ("certificate", "tls"),
    [("expired", {"ca_file": "ca"}), ("server", {"server_name": "localhost"})],
    ids=["expired", "unknown-ca"],
)
def test_a_bad_certificate_is_a_tls_error_with_no_fallback(pki, certificate, tls):
    sleeps: list[float] = []
    tls = {k: pki["ca"].cert if v == "ca" else v for k, v in tls.items()}
    with tls_server(pki[certificate]) as (url, served), _source(url, sleeps, **tls) as source:
        with pytest.raises(SourceError) as caught:
            source.now()
        assert source.ready() is False
    assert caught.value.reason == "tls"
    assert served == [] and sleeps == []  # nothing sent, not in plain HTTP either


# --- a WebSocket behind uvicorn -----------------------------------------------------------------


async def _hello(websocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


@pytest.mark.fault("H3")
def test_a_websocket_handshake_over_tls_needs_credentials(pki, tmp_path):
    """The forecaster's /ws path in miniature: uvicorn with `uvicorn_options()` and BasicAuth;
    the handshake without credentials is answered 401 before any WebSocket exists."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from webcommon.webconfig import load_web_config

    config = _web_config(
        tmp_path, "web", {"cert_file": str(pki["server"].cert), "key_file": str(pki["server"].key)}
    )
    web = load_web_config(config)
    app = Starlette(routes=[WebSocketRoute("/ws", _hello)])
    web.install(app, TOKEN)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            ws="websockets-sansio",
            **web.uvicorn_options(),
        )
    )
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"wss://127.0.0.1:{port}/ws"
        context = ssl.create_default_context(cafile=str(pki["ca"].cert))
        with pytest.raises(InvalidStatus) as caught, connect(url, ssl=context, open_timeout=5):
            pass
        assert caught.value.response.status_code == 401
        with connect(url, ssl=context, open_timeout=5, additional_headers=_basic()) as ws:
            assert ws.recv(timeout=5) == "hello"
    finally:
        server.should_exit = True
        thread.join(10)
