"""The web configuration file of every listener (`--web.config.file`): TLS and basic auth, in
the format of Prometheus's exporter-toolkit (`web-config.yml`)::

    tls_server_config:
      cert_file: server.crt            # relative paths: against this file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # default NoClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12               # TLS12 (default) or TLS13; max_version likewise
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      alice: $2y$10$...                # bcrypt hash: htpasswd -nBC 10 "" | tr -d ':\\n'

`load_web_config(path)` validates the file into a frozen `WebConfig` or raises
`WebConfigError` naming the file and the key; the certificates and keys are loaded once then,
so a wrong path or a key that does not match its certificate is found before the listener
starts. `WebConfig.uvicorn_options()` gives the `uvicorn.Config` keyword arguments of the TLS
listener, `WebConfig.install(app, token)` adds `BasicAuth` to a Starlette app.

Differences from exporter-toolkit, each refused with a message rather than ignored:
`RequestClientCert` and `RequireAnyClientCert` (Python's ssl module verifies every client
certificate it asks for), TLS 1.0 and 1.1, `cipher_suites`, `curve_preferences`,
`prefer_server_cipher_suites`, `client_allowed_sans` and inline `cert` / `key` /
`client_ca`. `http_server_config.http2` is accepted and has no effect (the listeners speak
HTTP/1.1). Certificates are read at start: a rotated certificate needs a restart.

Authentication rule (`BasicAuth`): with `basic_auth_users`, every HTTP request and every
WebSocket handshake, on every path, needs valid basic-auth credentials; where the listener
also has a bearer token (`--web.token-file`), `Authorization: Bearer <token>` is accepted
instead, since a client sends one `Authorization` header. The routes that the token guards
still need the token: basic auth admits reading, the token admits changing. A refusal is 401
with `WWW-Authenticate: Basic` and the same body whether or not the user exists; an unknown
user costs a bcrypt check like a known one. Successful checks are remembered per user (an HMAC
of the password under a per-process key, compared in constant time), so a scraper pays bcrypt
once, not on every scrape.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import bcrypt
import yaml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

WEB_CONFIG_HELP = (
    "exporter-toolkit web configuration file: TLS and basic auth of this listener "
    "(docs/DEPLOYMENT.md)"
)
"""The help of every listener's `--web.config.file`."""

CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = MappingProxyType(
    {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
)
TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType(
    {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
)
# exporter-toolkit's keys that this implementation refuses, and why.
_UNSUPPORTED = {
    "RequestClientCert": "Python's ssl module verifies every client certificate it asks for",
    "RequireAnyClientCert": "Python's ssl module verifies every client certificate it asks for",
    "RequireClientCert": "Python's ssl module verifies every client certificate it asks for",
    "TLS10": "TLS 1.0 is not supported",
    "TLS11": "TLS 1.1 is not supported",
    "cipher_suites": "OpenSSL's default cipher suites are used",
    "curve_preferences": "OpenSSL's default curves are used",
    "prefer_server_cipher_suites": "OpenSSL's default order is used",
    "client_allowed_sans": "every certificate the client CA signed is accepted",
    "cert": "use cert_file",
    "key": "use key_file",
    "client_ca": "use client_ca_file",
}
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
)
_HTTP_KEYS = ("headers", "http2")
# exporter-toolkit's allowed response headers; None: any value.
_HEADERS: Mapping[str, tuple[str, ...] | None] = MappingProxyType(
    {
        "strict-transport-security": None,
        "x-content-type-options": ("nosniff",),
        "x-frame-options": ("deny", "sameorigin"),
        "x-xss-protection": None,
        "content-security-policy": None,
    }
)
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_UNAUTHORIZED = json.dumps(
    {"error": "unauthorized", "reason": "valid credentials are required"}
).encode()


class WebConfigError(ValueError):
    """An invalid web configuration file; `key` is the dotted key ('' for the file)."""

    def __init__(self, path: Path, key: str, message: str) -> None:
        super().__init__(f"web config file {path}: {key + ': ' if key else ''}{message}")
        self.path = path
        self.key = key


@dataclass(frozen=True)
class TLSServerConfig:
    """`tls_server_config`, its paths resolved against the file's directory."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        return CLIENT_AUTH_TYPES[self.client_auth_type]

    def harden(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """`context` limited to the configured TLS versions, renegotiation off."""
        context.minimum_version = TLS_VERSIONS[self.min_version]
        context.maximum_version = TLS_VERSIONS[self.max_version]
        context.options |= ssl.OP_NO_RENEGOTIATION
        return context

    def server_context(self) -> ssl.SSLContext:
        """A complete server context (what uvicorn builds from `uvicorn_options`)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        context.verify_mode = self.verify_mode
        if self.client_ca_file is not None:
            context.load_verify_locations(self.client_ca_file)
        return self.harden(context)


@dataclass(frozen=True)
class WebConfig:
    """A validated web configuration; `WebConfig()` is the empty one (plain HTTP, no auth)."""

    path: Path | None = None
    tls: TLSServerConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    headers: tuple[tuple[str, str], ...] = ()
    http2: bool = True

    @property
    def verifies_clients(self) -> bool:
        """Whether every client must present a certificate the client CA signed."""
        return self.tls is not None and self.tls.client_auth_type == "RequireAndVerifyClientCert"

    @property
    def requires_credentials(self) -> bool:
        """Whether every connection must authenticate (basic auth or a verified client
        certificate): then a listener outside the loopback range needs no bearer token."""
        return bool(self.users) or self.verifies_clients

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments of `uvicorn.Config` for this listener ({} without TLS).

        The TLS versions are set through `ssl_context_factory` (uvicorn >= 0.47), on the
        context uvicorn builds from the other options; `ssl_ciphers=None` keeps OpenSSL's
        defaults whatever uvicorn's default is."""
        tls = self.tls
        if tls is None:
            return {}

        def factory(_config: object, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            return tls.harden(default())

        return {
            "ssl_certfile": str(tls.cert_file),
            "ssl_keyfile": str(tls.key_file),
            "ssl_ca_certs": None if tls.client_ca_file is None else str(tls.client_ca_file),
            "ssl_cert_reqs": int(tls.verify_mode),
            "ssl_ciphers": None,
            "ssl_context_factory": factory,
        }

    def install(self, app: Starlette, token: str | None = None) -> None:
        """Add `BasicAuth` (users, `token` as the alternative, headers) to `app` as its
        outermost middleware; nothing when neither users nor headers are configured."""
        if self.users or self.headers:
            app.add_middleware(BasicAuth, users=self.users, token=token, headers=self.headers)

    def wrap(self, app: ASGIApp, token: str | None = None) -> ASGIApp:
        """`app` behind `BasicAuth`, for any ASGI app; `app` itself when there is nothing to do."""
        if self.users or self.headers:
            return BasicAuth(app, users=self.users, token=token, headers=self.headers)
        return app


def client_ssl_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    insecure_skip_verify: bool = False,
) -> ssl.SSLContext:
    """A client context in the terms of Prometheus's `tls_config`: the server's certificate is
    verified against `ca_file` alone (the system's CAs without it), host name included;
    `cert_file` and `key_file` are the client certificate. OSError or ssl.SSLError if a file
    cannot be loaded; `insecure_skip_verify` turns verification off."""
    if ca_file is not None:
        context = ssl.create_default_context(cafile=str(ca_file))
    else:
        context = ssl.create_default_context()
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def load_web_config(path: Path | str | None) -> WebConfig:
    """The validated configuration of the file at `path` (`WebConfig()` for None)."""
    if path is None:
        return WebConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WebConfigError(path, "", f"cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WebConfigError(path, "", f"not valid YAML: {exc}") from None
    data = {} if data is None else data
    _mapping(path, "", data)
    _known(path, "", data, _TOP_KEYS)
    base = path.absolute().parent
    tls = _tls(path, base, data.get("tls_server_config"))
    users = _users(path, data.get("basic_auth_users"))
    headers, http2 = _http(path, data.get("http_server_config"))
    return WebConfig(path, tls, users, headers, http2)


def _mapping(path: Path, key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WebConfigError(path, key, "expected a mapping with string keys")
    return value


def _known(path: Path, prefix: str, data: Mapping[str, Any], keys: Sequence[str]) -> None:
    for key in data:
        where = f"{prefix}{key}"
        if key in _UNSUPPORTED:
            raise WebConfigError(path, where, f"not supported ({_UNSUPPORTED[key]})")
        if key not in keys:
            raise WebConfigError(path, where, f"unknown key (known: {', '.join(keys)})")


def _string(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise WebConfigError(path, key, "expected a non-empty string")
    return value


def _file(path: Path, base: Path, key: str, value: object) -> Path:
    """`value` as a path resolved against `base`, readable."""
    file = base / _string(path, key, value)
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise WebConfigError(path, key, f"cannot read {file}: {exc.strerror or exc}") from None
    return file


def _choice(path: Path, key: str, value: object, choices: Mapping[str, object]) -> str:
    text = _string(path, key, value)
    if text in _UNSUPPORTED:
        raise WebConfigError(path, key, f"{text} is not supported ({_UNSUPPORTED[text]})")
    if text not in choices:
        raise WebConfigError(path, key, f"{text!r} is not one of {', '.join(choices)}")
    return text


def _tls(path: Path, base: Path, value: object) -> TLSServerConfig | None:
    if value is None:
        return None
    data = _mapping(path, "tls_server_config", value)
    if not data:
        return None
    _known(path, "tls_server_config.", data, _TLS_KEYS)
    for key in ("cert_file", "key_file"):
        if key not in data:
            raise WebConfigError(path, f"tls_server_config.{key}", "missing")
    cert = _file(path, base, "tls_server_config.cert_file", data["cert_file"])
    key_file = _file(path, base, "tls_server_config.key_file", data["key_file"])
    auth = _choice(
        path,
        "tls_server_config.client_auth_type",
        data.get("client_auth_type", "NoClientCert"),
        CLIENT_AUTH_TYPES,
    )
    ca = data.get("client_ca_file")
    ca_file = None if ca is None else _file(path, base, "tls_server_config.client_ca_file", ca)
    if ca_file is not None and auth == "NoClientCert":
        raise WebConfigError(
            path, "tls_server_config.client_ca_file", "set, but client_auth_type is NoClientCert"
        )
    if ca_file is None and auth != "NoClientCert":
        raise WebConfigError(
            path, "tls_server_config.client_ca_file", f"client_auth_type {auth} needs it"
        )
    versions = {
        name: _choice(path, f"tls_server_config.{name}", data.get(name, default), TLS_VERSIONS)
        for name, default in (("min_version", "TLS12"), ("max_version", "TLS13"))
    }
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise WebConfigError(path, "tls_server_config.max_version", "below min_version")
    tls = TLSServerConfig(cert, key_file, auth, ca_file, **versions)
    try:
        tls.server_context()
    except ssl.SSLError as exc:
        raise WebConfigError(
            path, "tls_server_config", f"cannot load the certificate, key or CA: {exc}"
        ) from None
    return tls


def _users(path: Path, value: object) -> Mapping[str, bytes]:
    if value is None:
        return MappingProxyType({})
    data = _mapping(path, "basic_auth_users", value)
    users = {}
    for user, hashed in data.items():
        key = f"basic_auth_users.{user}"
        if not user or ":" in user:
            raise WebConfigError(path, key, "a user name is non-empty and holds no ':'")
        match = _BCRYPT_RE.match(hashed) if isinstance(hashed, str) else None
        if match is None or not 4 <= int(match.group(1)) <= 31:
            raise WebConfigError(
                path, key, "not a bcrypt hash ($2a$, $2b$ or $2y$, cost 04-31, 60 characters)"
            )
        users[user] = hashed.encode("ascii")
    return MappingProxyType(users)


def _http(path: Path, value: object) -> tuple[tuple[tuple[str, str], ...], bool]:
    if value is None:
        return (), True
    data = _mapping(path, "http_server_config", value)
    _known(path, "http_server_config.", data, _HTTP_KEYS)
    http2 = data.get("http2", True)
    if not isinstance(http2, bool):
        raise WebConfigError(path, "http_server_config.http2", "expected true or false")
    headers = []
    configured = _mapping(path, "http_server_config.headers", data.get("headers") or {})
    for name, text in configured.items():
        key = f"http_server_config.headers.{name}"
        if name.lower() not in _HEADERS:
            allowed = ", ".join(h.title() for h in _HEADERS)
            raise WebConfigError(path, key, f"cannot be configured (allowed: {allowed})")
        allowed_values = _HEADERS[name.lower()]
        if not isinstance(text, str) or not text or any(c in text for c in "\r\n\0"):
            raise WebConfigError(path, key, "expected a one-line string")
        if allowed_values is not None and text not in allowed_values:
            raise WebConfigError(path, key, f"expected one of {', '.join(allowed_values)}")
        headers.append((name, text))
    return tuple(headers), http2


class BasicAuth:
    """ASGI middleware: basic auth over HTTP requests and WebSocket handshakes (module docs),
    and the configured response headers. Other scopes (lifespan) pass through.

    `users` maps a user to its bcrypt hash; `token`, if any, is accepted as
    `Authorization: Bearer <token>` instead. Without users only the headers are added.
    """

    def __init__(
        self,
        app: ASGIApp,
        users: Mapping[str, bytes],
        token: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.app = app
        self.users = dict(users)
        self.token = token.encode() if token else None
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._key = secrets.token_bytes(32)  # the cache's HMAC key, never leaves the process
        self._verified: dict[str, bytes] = {}  # user -> HMAC of the password bcrypt accepted
        self._lock = threading.Lock()  # one bcrypt at a time, as exporter-toolkit does
        # An unknown user is checked against this hash, so that it costs as long as a known one.
        cost = int(max((h[4:6] for h in self.users.values()), default=b"10"))
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost)) if users else b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.users and not await self._admitted(scope):
            await self._refuse(scope, receive, send)
            return
        if self.headers and scope["type"] == "http":
            send = self._adding_headers(send)
        await self.app(scope, receive, send)

    async def _admitted(self, scope: Scope) -> bool:
        value = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, credentials = value.partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() == b"bearer" and self.token is not None:
            return hmac.compare_digest(credentials, self.token)
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, password = decoded.partition(":")
        if not colon:
            return False
        return await self.verify(user, password)

    async def verify(self, user: str, password: str) -> bool:
        """Whether `password` is `user`'s; bcrypt (in a worker thread) unless remembered."""
        digest = hmac.new(self._key, f"{user}:{password}".encode(), hashlib.sha256).digest()
        hashed = self.users.get(user)
        remembered = self._verified.get(user)
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return True
        ok = await run_in_threadpool(self._bcrypt, password.encode(), hashed or self._dummy)
        if ok and hashed is not None:
            self._verified[user] = digest
            return True
        return False

    def _bcrypt(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            try:
                return bcrypt.checkpw(password, hashed)
            except ValueError:  # longer than bcrypt's 72 bytes, or a malformed hash
                return False

    def _adding_headers(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return sending

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_UNAUTHORIZED)).encode()),
            (b"www-authenticate", b"Basic"),
            *self.headers,
        ]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": _UNAUTHORIZED})
            return
        message = await receive()  # websocket.connect: the handshake is not answered yet
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": 401, "headers": headers}
            await send(start)
            await send({"type": "websocket.http.response.body", "body": _UNAUTHORIZED})
        else:  # closed before accept: the server answers the handshake with 403
            await send({"type": "websocket.close", "code": 1008})
