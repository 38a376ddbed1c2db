"""The web configuration file (webcommon.webconfig): parsing, the uvicorn options, basic auth
over HTTP and WebSocket, and its wiring into the simulator's and the forecaster's settings.

No server starts: the middleware runs under Starlette's TestClient; the certificates are made
in tmp_path by tests/tls_certs.py.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import bcrypt
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from tests.tls_certs import Authority
from webcommon import webconfig
from webcommon.webconfig import BasicAuth, WebConfig, WebConfigError, load_web_config

PASSWORD = "s3cret pass"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
TOKEN = "bearer-token-123"


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority.make(directory)
    return ca, ca.issue("server"), ca.issue("other", ("other.example",), ())


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- parsing -----------------------------------------------------------------------------------


def test_a_full_file_resolves_its_paths_against_its_own_directory(tmp_path, pki, monkeypatch):
    ca, server, _ = pki
    conf = tmp_path / "conf"
    conf.mkdir()
    for source, name in ((server.cert, "tls.crt"), (server.key, "tls.key"), (ca.cert, "ca.crt")):
        (conf / name).write_bytes(source.read_bytes())
    path = write(
        conf / "web.yml",
        f"""
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS13
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  alice: "{HASH}"
""",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    web = load_web_config(Path("..") / "conf" / "web.yml")
    assert web.tls is not None
    assert web.tls.cert_file.resolve() == (conf / "tls.crt").resolve()
    assert web.tls.client_ca_file is not None
    assert web.tls.client_ca_file.resolve() == (conf / "ca.crt").resolve()
    assert web.users == {"alice": HASH.encode()}
    assert web.headers == (
        ("X-Frame-Options", "deny"),
        ("Strict-Transport-Security", "max-age=31536000"),
    )
    assert web.http2 is False
    assert web.verifies_clients and web.requires_credentials
    options = web.uvicorn_options()
    assert options["ssl_certfile"] == str(web.tls.cert_file)
    assert options["ssl_keyfile"] == str(web.tls.key_file)
    assert options["ssl_ca_certs"] == str(web.tls.client_ca_file)
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    context = options["ssl_context_factory"](None, web.tls.server_context)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert path.exists()


def test_the_uvicorn_options_fit_uvicorn_config(tmp_path, pki):
    import uvicorn

    _, server, _ = pki
    path = write(
        tmp_path / "web.yml",
        f"tls_server_config: {{cert_file: {server.cert}, key_file: {server.key}}}\n",
    )
    web = load_web_config(path)
    assert not web.requires_credentials  # TLS alone authenticates nobody
    config = uvicorn.Config(lambda *a: None, **web.uvicorn_options())
    config.load()
    assert isinstance(config.ssl, ssl.SSLContext)
    assert config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.ssl.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("text", ["", "{}\n", "tls_server_config: {}\nbasic_auth_users:\n"])
def test_an_empty_file_is_plain_http_without_auth(tmp_path, text):
    web = load_web_config(write(tmp_path / "web.yml", text))
    assert web.tls is None and not web.users and web.uvicorn_options() == {}
    assert not web.requires_credentials
    assert load_web_config(None) == WebConfig()


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("tls_config: {}\n", "tls_config", "unknown key"),
        ("basic_auth_user: {}\n", "basic_auth_user", "unknown key"),
        ("tls_server_config: {cert_file: a, key_file: b, ca: c}\n", "tls_server_config.ca", ""),
        ("http_server_config: {header: {}}\n", "http_server_config.header", "unknown key"),
        ("tls_server_config: {cipher_suites: []}\n", "tls_server_config.cipher_suites", "not"),
        ("tls_server_config: {key_file: x}\n", "tls_server_config.cert_file", "missing"),
        ("basic_auth_users: {alice: plain}\n", "basic_auth_users.alice", "not a bcrypt hash"),
        (f"basic_auth_users: {{alice: '{HASH[:-1]}'}}\n", "basic_auth_users.alice", "bcrypt"),
        ("basic_auth_users: {alice: 12}\n", "basic_auth_users.alice", "bcrypt"),
        ("basic_auth_users: [alice]\n", "basic_auth_users", "mapping"),
        ("http_server_config: {headers: {Server: x}}\n", "headers.Server", "cannot be"),
        ("http_server_config: {headers: {X-Frame-Options: allow}}\n", "X-Frame-Options", "one"),
        ("http_server_config: {http2: maybe}\n", "http_server_config.http2", "true or false"),
        ("- a list\n", "", "mapping"),
        ("a: [unclosed\n", "", "not valid YAML"),
    ],
)
def test_a_bad_file_names_the_key(tmp_path, text, key, words):
    path = write(tmp_path / "web.yml", text)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    message = str(caught.value)
    assert message.startswith(f"web config file {path}: ")
    assert key in message and words in message
    assert caught.value.key.endswith(key) or not key


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WebConfigError, match=r"cannot read it: No such file"):
        load_web_config(tmp_path / "absent.yml")


def _tls_file(tmp_path: Path, server, **extra: str) -> Path:
    lines = [f"  cert_file: {server.cert}", f"  key_file: {server.key}"]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return write(tmp_path / "web.yml", "tls_server_config:\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"client_auth_type": "RequestClientCert"}, "RequestClientCert is not supported"),
        ({"client_auth_type": "RequireAnyClientCert"}, "not supported"),
        ({"client_auth_type": "Sometimes"}, "'Sometimes' is not one of"),
        ({"client_auth_type": "RequireAndVerifyClientCert"}, "client_ca_file: client_auth_type"),
        ({"client_ca_file": "CA"}, "client_ca_file: set, but client_auth_type is NoClientCert"),
        ({"min_version": "TLS10"}, "TLS10 is not supported"),
        ({"min_version": "TLS13", "max_version": "TLS12"}, "max_version: below min_version"),
        ({"key_file": "nowhere.key"}, "key_file: cannot read"),
    ],
)
def test_bad_tls_settings_are_refused(tmp_path, pki, extra, words):
    ca, server, _ = pki
    if extra.get("client_ca_file") == "CA":
        extra = {**extra, "client_ca_file": str(ca.cert)}
    if "key_file" in extra:
        path = write(
            tmp_path / "web.yml",
            f"tls_server_config: {{cert_file: {server.cert}, key_file: nowhere.key}}\n",
        )
    else:
        path = _tls_file(tmp_path, server, **extra)
    with pytest.raises(WebConfigError, match=words):
        load_web_config(path)


def test_a_key_that_is_not_the_certificates_is_refused_at_load(tmp_path, pki):
    _, server, other = pki
    path = write(
        tmp_path / "web.yml",
        f"tls_server_config: {{cert_file: {server.cert}, key_file: {other.key}}}\n",
    )
    with pytest.raises(WebConfigError, match="cannot load the certificate"):
        load_web_config(path)


# --- the middleware ----------------------------------------------------------------------------


async def _metrics(request) -> PlainTextResponse:
    return PlainTextResponse("up 1\n")


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


def _client(**options) -> TestClient:
    app = Starlette(routes=[Route("/metrics", _metrics), WebSocketRoute("/ws", _ws)])
    web = WebConfig(users={"alice": HASH.encode()}, **options)
    web.install(app, TOKEN)
    return TestClient(app)


def test_no_or_wrong_credentials_get_the_same_401(monkeypatch):
    client = _client()
    answers = [
        client.get("/metrics"),
        client.get("/metrics", headers=basic("alice", "wrong")),
        client.get("/metrics", headers=basic("mallory", PASSWORD)),
        client.get("/metrics", headers={"Authorization": "Basic !!notbase64"}),
        client.get("/metrics", headers={"Authorization": "Bearer wrong"}),
        client.get("/metrics", headers={"Authorization": "Digest x"}),
    ]
    for answer in answers:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Basic"
        assert answer.content == answers[0].content
    assert answers[0].json()["error"] == "unauthorized"


def test_right_credentials_or_the_token_are_admitted():
    client = _client()
    assert client.get("/metrics", headers=basic("alice", PASSWORD)).text == "up 1\n"
    bearer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200


def test_a_remembered_password_does_not_pay_bcrypt_again(monkeypatch):
    calls = []
    real = bcrypt.checkpw

    def counting(password, hashed):
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webconfig.bcrypt, "checkpw", counting)
    client = _client()
    for _ in range(3):
        assert client.get("/metrics", headers=basic("alice", PASSWORD)).status_code == 200
    assert len(calls) == 1
    assert client.get("/metrics", headers=basic("alice", "guess")).status_code == 401
    assert client.get("/metrics", headers=basic("nobody", "guess")).status_code == 401
    assert len(calls) == 3  # a wrong password and an unknown user both pay bcrypt
    assert client.get("/metrics", headers=basic("alice", PASSWORD)).status_code == 200
    assert len(calls) == 3


def test_a_password_over_72_bytes_is_refused_not_raised():
    client = _client()
    assert client.get("/metrics", headers=basic("alice", "x" * 100)).status_code == 401


def test_a_websocket_handshake_without_credentials_is_refused():
    client = _client()
    with pytest.raises(WebSocketDenialResponse) as caught, client.websocket_connect("/ws"):
        pass
    assert caught.value.status_code == 401
    assert caught.value.headers["www-authenticate"] == "Basic"
    with client.websocket_connect("/ws", headers=basic("alice", PASSWORD)) as ws:
        assert ws.receive_text() == "hello"


@pytest.mark.anyio
async def test_a_server_without_denial_responses_gets_a_close_before_accept():
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # never reached
        raise AssertionError

    middleware = BasicAuth(app, {"alice": HASH.encode()})
    await middleware({"type": "websocket", "headers": [], "extensions": {}}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_configured_headers_are_added_to_every_answer():
    client = _client(headers=(("X-Frame-Options", "deny"),))
    assert client.get("/metrics").headers["x-frame-options"] == "deny"
    assert client.get("/metrics", headers=basic("alice", PASSWORD)).headers["x-frame-options"]


def test_headers_alone_need_no_credentials_and_the_lifespan_passes():
    app = Starlette(routes=[Route("/metrics", _metrics)])
    WebConfig(headers=(("X-Content-Type-Options", "nosniff"),)).install(app)
    with TestClient(app) as client:  # runs the lifespan through the middleware
        answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["x-content-type-options"] == "nosniff"


# --- the simulator -----------------------------------------------------------------------------


def _users_file(tmp_path: Path) -> Path:
    return write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{HASH}'\n")


def test_the_simulator_app_needs_basic_auth_and_the_token_still_guards_changes(tmp_path):
    from simulator.app import build_app
    from simulator.engine import Engine
    from simulator.fleet import build_fleet

    epoch = 1_795_305_600.0
    engine = Engine(build_fleet(2, seed=1), epoch, clock=lambda: epoch + 600)
    app = build_app(engine, TOKEN, load_web_config(_users_file(tmp_path)))
    client = TestClient(app)
    node = engine.fleet.nodes[0]
    assert client.get("/metrics", params={"node": node}).status_code == 401
    assert client.get("/-/healthy").status_code == 401
    alice = basic("alice", PASSWORD)
    assert client.get("/metrics", params={"node": node}, headers=alice).is_success
    change = {"scenario": "critical"}
    reader = client.post("/scenario/set", json=change, headers=basic("alice", PASSWORD))
    assert reader.status_code == 401  # basic auth admits reading; changes need the token
    writer = client.post("/scenario/set", json=change, headers={"Authorization": f"Bearer {TOKEN}"})
    assert writer.status_code == 200


def test_the_simulator_refuses_a_bad_web_config_file_with_exit_2(tmp_path, capsys):
    from simulator.config import load_config

    path = write(tmp_path / "web.yml", "tls_server_config: {cert: x}\n")
    with pytest.raises(SystemExit) as caught:
        load_config(["serve", "--web.config.file", str(path)], {})
    assert caught.value.code == 2
    assert "tls_server_config.cert: not supported" in capsys.readouterr().err
    environ = {"SIMULATOR_WEB_CONFIG_FILE": str(_users_file(tmp_path))}
    assert load_config(["serve"], environ).web_config_file == tmp_path / "web.yml"


def test_basic_auth_lets_the_simulator_listen_beyond_loopback(tmp_path, monkeypatch):
    import uvicorn

    from simulator.__main__ import main

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(self.config))
    argv = ["serve", "--servers", "1", "--web.listen-address", "0.0.0.0:0"]
    assert main(argv) == 2  # neither a token nor credentials: refused
    assert main([*argv, "--web.config.file", str(_users_file(tmp_path))]) == 0
    assert len(served) == 1 and served[0].host == "0.0.0.0"


# --- the forecaster ----------------------------------------------------------------------------


def test_the_forecaster_takes_the_web_config_file_under_both_flag_names(tmp_path):
    from forecaster.config import load_config

    path = _users_file(tmp_path)
    for flag in ("--web.config-file", "--web.config.file"):
        assert load_config([flag, str(path)], {}).web.config_file == path
    environ = {"FORECASTER_WEB_CONFIG_FILE": str(path)}
    assert load_config([], environ).web.config_file == path
    assert load_config([], {}).web.config_file is None


def test_the_forecaster_refuses_a_bad_web_config_file_naming_it(tmp_path):
    from forecaster.config import ConfigError, load_config

    path = write(tmp_path / "web.yml", "basic_auth_users: {alice: nothash}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(["--web.config.file", str(path)], {})
    assert caught.value.key == "web.config_file"
    assert "basic_auth_users.alice: not a bcrypt hash" in str(caught.value)


def test_the_forecaster_reads_prometheus_tls_settings(tmp_path, pki):
    from forecaster.config import ConfigError, load_config

    ca, client, _ = pki
    flags = ["--prometheus.url", "https://prom.example:9090"]
    flags += ["--prometheus.tls-config.ca-file", str(ca.cert)]
    flags += ["--prometheus.tls-config.cert-file", str(client.cert)]
    flags += ["--prometheus.tls-config.key-file", str(client.key)]
    flags += ["--prometheus.tls-config.server-name", "prometheus.internal"]
    tls = load_config(flags, {}).prometheus.tls_config
    assert (tls.ca_file, tls.server_name, tls.insecure_skip_verify) == (
        ca.cert,
        "prometheus.internal",
        False,
    )
    assert not load_config([], {}).prometheus.tls_config.configured
    bad = [
        (["--prometheus.tls-config.ca-file", str(ca.cert)], "is not https://"),
        ([*flags[:4], "--prometheus.tls-config.cert-file", str(client.cert)], "set together"),
        ([*flags[:2], "--prometheus.tls-config.ca-file", str(tmp_path / "no")], "cannot load"),
    ]
    for argv, words in bad:
        with pytest.raises(ConfigError, match=words):
            load_config(argv, {})


def test_the_forecaster_app_needs_basic_auth_on_every_route(tmp_path):
    import forecaster.__main__ as forecaster_main
    from forecaster.config import load_config

    path = _users_file(tmp_path)
    config = load_config(["--web.config.file", str(path), "--state.dir", str(tmp_path / "s")], {})
    *_, app = forecaster_main.build(config, TOKEN, load_web_config(config.web.config_file))
    with TestClient(app) as client:
        for route in ("/metrics", "/-/healthy", "/predictions/current"):
            assert client.get(route).status_code == 401, route
        assert client.get("/metrics", headers=basic("alice", PASSWORD)).is_success
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/metrics", headers=bearer).is_success  # the token admits too
        assert client.post("/-/reload", headers=basic("alice", PASSWORD)).status_code == 401


@pytest.mark.parametrize("service", ["forecaster", "retrainer"])
def test_credentials_let_the_forecaster_and_retrainer_listen_beyond_loopback(
    tmp_path, monkeypatch, service
):
    import uvicorn

    if service == "forecaster":
        from forecaster.__main__ import main

        argv = ["--state.dir", str(tmp_path / "s"), "--web.listen-address", "0.0.0.0:0"]
        monkeypatch.setattr("forecaster.__main__.build", _refuse_build)
    else:
        from training.retrain.service import main

        argv = ["--web.listen-address", "0.0.0.0:0", "--models.dir", str(tmp_path / "m")]
        monkeypatch.setattr("training.retrain.service.serve", _refuse_build)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    assert main(argv, {}) == 2  # neither a token nor credentials: refused
    with pytest.raises(_StartedError) as started:
        main([*argv, "--web.config.file", str(_users_file(tmp_path))], {})
    web = started.value.args[-1]
    assert isinstance(web, WebConfig) and web.requires_credentials


class _StartedError(Exception):
    """Raised in place of building the service: the start got past the listener checks."""


def _refuse_build(*args, **kwargs):
    raise _StartedError(*args, *kwargs.values())
