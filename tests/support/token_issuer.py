"""A token issuer for docker-registry's own ``auth: token`` mode, on 127.0.0.1.

The scripted realm in the fault tests checks only the client's side of the bearer flow: it
hands out opaque strings and the scripted front checks them. A real registry verifies a signed
JWT instead, so this issuer makes what distribution 2.8 accepts (``registry/auth/token``):

* a header ``{"typ": "JWT", "alg": "ES256", "x5c": [leaf]}``: the leaf certificate (base64 DER)
  must chain to a certificate in the registry's ``rootcertbundle``; here a CA made at start,
  written to ``<directory>/token-ca.pem``, signs the leaf;
* claims ``iss`` (the registry's ``issuer``), ``sub``, ``aud`` (the registry's ``service``),
  ``exp``, ``nbf``, ``iat``, ``jti`` and ``access: [{type, name, actions}]``, which must cover
  what the request does (``pull``; ``pull,push`` for an upload);
* an ES256 signature: raw ``r || s``, 32 bytes each, as JOSE wants (not DER).

``GET /token?service=...&scope=...`` with ``Authorization: Basic`` of a known user is answered
with a token granting every scope asked; wrong credentials get 401; no credentials get a token
with no access (as public token servers do for anonymous users), which the registry then
refuses. Every request is recorded in :attr:`TokenIssuer.requests` (for cache checks). With
``tls=(certificate, key)`` the realm is served over HTTPS.

Plain Python (no pytest); it needs the ``cryptography`` package of the dev extra.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support.registry import TokenAuth

SERVICE = "ctrpy-test-registry"
ISSUER = "ctrpy-test-issuer"


@dataclass(frozen=True)
class TokenRequest:
    """One request the issuer answered: who asked (None: anonymous, or the name given with
    wrong credentials when ``status`` is 401) and for which scopes."""

    user: str | None
    scopes: tuple[str, ...]
    status: int


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _signing_pair() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    """A fresh CA and a leaf it signed (P-256); returns (leaf key, leaf cert, CA cert). Valid
    from an hour ago (clock skew) for two days."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("ctrpy test token CA")).issuer_name(_name("ctrpy test token CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("ctrpy test token signer")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return leaf_key, leaf, ca


def parse_scope(scope: str) -> dict[str, object] | None:
    """``repository:<name>:<a,b>`` as an ``access`` entry; None for what is not one."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name or not actions:
        return None
    return {"type": kind, "name": name, "actions": sorted(set(actions.split(",")))}


class TokenIssuer:
    """The issuer's keys and an HTTP server on 127.0.0.1 answering ``/token``. Stop it with
    :meth:`close` (or ``with``)."""

    def __init__(self, directory: Path, users: Mapping[str, str], *, lifetime: int = 300,
                 service: str = SERVICE, issuer: str = ISSUER, tls: tuple[Path, Path] | None = None) -> None:
        self.users = dict(users)
        self.lifetime = lifetime
        self.service = service
        self.issuer = issuer
        self.requests: list[TokenRequest] = []
        self._key, leaf, ca = _signing_pair()
        self._x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
        directory.mkdir(parents=True, exist_ok=True)
        self.rootcertbundle = directory / "token-ca.pem"
        self.rootcertbundle.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self._lock = threading.Lock()
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, body = outer._answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # (certificate, key): the realm is https, like the registry's
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/token"

    def auth(self) -> TokenAuth:
        """What LocalRegistry needs to trust this issuer."""
        return TokenAuth(self.realm, self.service, self.issuer, self.rootcertbundle)

    def scopes_issued(self, user: str | None = None) -> list[tuple[str, ...]]:
        """The scopes of every token handed out (to ``user`` only, when given)."""
        with self._lock:
            return [r.scopes for r in self.requests if r.status == 200 and (user is None or r.user == user)]

    def _answer(self, path: str, authorization: str) -> tuple[int, dict[str, object]]:
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query)
        scopes = tuple(scope for value in query.get("scope", []) for scope in value.split(" ") if scope)
        if url.path != "/token":
            return 404, {"details": "not found"}
        user: str | None = None
        if authorization:
            scheme, _, encoded = authorization.partition(" ")
            try:
                user, _, password = base64.b64decode(encoded).decode().partition(":")
            except ValueError:
                user, password = "", ""
            if scheme.lower() != "basic" or self.users.get(user) != password or not user:
                with self._lock:
                    self.requests.append(TokenRequest(user, scopes, 401))
                return 401, {"details": "incorrect username or password"}
        if query.get("service", [""])[0] != self.service:
            return 400, {"details": "unknown service"}
        access = [entry for scope in scopes if (entry := parse_scope(scope))] if user else []
        token = self.issue(user or "", access)
        with self._lock:
            self.requests.append(TokenRequest(user, scopes, 200))
        issued = datetime.datetime.now(datetime.UTC).isoformat()
        return 200, {"token": token, "access_token": token, "expires_in": self.lifetime, "issued_at": issued}

    def issue(self, subject: str, access: list[dict[str, object]]) -> str:
        """A signed token for ``subject`` granting ``access``."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + self.lifetime,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(16), "access": access}
        signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode()))
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> TokenIssuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
