"""A private OCI registry (Debian's ``docker-registry``) on loopback, skopeo to fill it, and a
small scriptable HTTP server for what a real registry will not do on demand (fault injection,
a bearer-token realm).

Plain Python on purpose: benchmarks import this without pytest. Use it as a context manager::

    with LocalRegistry(tmp_path / "reg") as registry:
        skopeo_copy(archive, f"{registry.host}/busybox:latest")

The registry listens on 127.0.0.1 on a free port, stores into the given directory, and is
stopped by pid (SIGTERM, then SIGKILL) on exit, even after a failure. ``htpasswd=(user, pw)``
turns on basic auth; ``token=TokenAuth(...)`` the registry's own bearer-token auth.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REGISTRY = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def self_signed(directory: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``name`` (an IP address), made with openssl;
    returns (certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=IP:{name}", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def htpasswd_line(user: str, password: str) -> str:
    """One bcrypt line of an htpasswd file (the only hash docker-registry accepts)."""
    import bcrypt  # a test dependency only

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}\n"


@dataclass(frozen=True)
class TokenAuth:
    """docker-registry's ``auth: token`` settings: the realm clients get tokens from, the
    ``service`` (a token's ``aud``), the ``issuer`` (its ``iss``) and the PEM bundle its signing
    chain must reach (tests/support/token_issuer.py makes all four)."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


@dataclass
class LocalRegistry:
    """docker-registry on ``127.0.0.1:<port>`` with its storage under ``directory``."""

    directory: Path
    htpasswd: tuple[str, str] | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve HTTPS
    token: TokenAuth | None = None  # bearer tokens from an issuer (instead of htpasswd)
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "registry.log"

    def _config(self) -> Path:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.directory / 'storage'}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if self.tls is not None:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.htpasswd is not None:
            passwd = self.directory / "htpasswd"
            passwd.write_text(htpasswd_line(*self.htpasswd))
            lines += ["auth:", "  htpasswd:", "    realm: ctrpy-test", f"    path: {passwd}"]
        elif self.token is not None:
            lines += ["auth:", "  token:", f"    realm: {self.token.realm}", f"    service: {self.token.service}",
                      f"    issuer: {self.token.issuer}", f"    rootcertbundle: {self.token.rootcertbundle}"]
        config = self.directory / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart, on the same port and storage) and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if not self.port:
                self.port = free_port()
            config = self._config()
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)
            if self._wait_ready(timeout):
                return
            self.stop()
            self.port = 0  # the port was taken meanwhile: pick another
        raise RuntimeError(f"docker-registry did not start; log:\n{self.log.read_text()[-4000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                scheme = "https" if self.tls else "http"
                context = ssl._create_unverified_context() if self.tls else None
                with urllib.request.urlopen(f"{scheme}://{self.host}/v2/", timeout=2, context=context):
                    return True
            except urllib.error.HTTPError as error:
                if error.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def kill(self) -> None:
        """SIGKILL the registry (a crash); :meth:`start` brings it back on the same port."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s, by pid."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- plain HTTP helpers for tests (no client library of the project) ---------------------

    def _auth_header(self) -> dict[str, str]:
        if self.htpasswd is None:
            return {}
        raw = f"{self.htpasswd[0]}:{self.htpasswd[1]}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    def get(self, path: str, accept: str = "") -> tuple[int, dict[str, str], bytes]:
        """GET ``/v2/<path>``; returns status, headers (lower-case names) and body."""
        headers = self._auth_header()
        if accept:
            headers["Accept"] = accept
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", "/v2/" + path, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> None:
        """PUT a manifest or index as it is (for documents skopeo cannot make, like an index of
        images pushed one by one)."""
        headers = {"Content-Type": media_type, **self._auth_header()}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("PUT", f"/v2/{repository}/manifests/{reference}", body=data, headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 201:
                raise RuntimeError(f"PUT manifest {repository}:{reference}: {response.status} {body!r}")
        finally:
            connection.close()


def skopeo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run skopeo with a private policy-free environment; raises with its stderr on failure."""
    result = subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def skopeo_copy(archive: str | os.PathLike[str], destination: str, *, fmt: str = "oci",
                creds: tuple[str, str] | None = None, dest_format: str = "") -> None:
    """Copy an archive written by ``ctrpy.testimage`` (``fmt`` ``oci`` or ``docker``) to
    ``docker://<destination>`` over plain HTTP. ``dest_format`` (``oci``, ``v2s2``) forces the
    manifest type written."""
    source = ("oci-archive:" if fmt == "oci" else "docker-archive:") + str(archive)
    args = ["copy", "--quiet", "--dest-tls-verify=false"]
    if creds is not None:
        args += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
    if dest_format:
        args += ["--format", dest_format]
    skopeo(*args, source, "docker://" + destination)


def skopeo_inspect_raw(reference: str, creds: tuple[str, str] | None = None) -> bytes:
    """The raw manifest skopeo reads for ``docker://<reference>``."""
    args = ["inspect", "--raw", "--tls-verify=false"]
    if creds is not None:
        args += ["--creds", f"{creds[0]}:{creds[1]}"]
    return skopeo(*args, "docker://" + reference).stdout.encode()


# -- a scriptable HTTP server ------------------------------------------------------------------


@dataclass
class Request:
    """What the scripted server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    """What it answers. ``body`` is sent in ``chunk`` pieces; ``stall_after`` bytes in, it sleeps
    ``stall_for`` seconds (a stall); ``cut_after`` bytes in, it closes the connection (a crash).
    ``length`` overrides Content-Length (to promise more than is sent)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunk: int = 1 << 16
    stall_after: int | None = None
    stall_for: float = 0.0
    cut_after: int | None = None
    length: int | None = None


Handler = Callable[[Request], Reply]


class ScriptedServer:
    """An HTTP/1.1 server on 127.0.0.1 whose every answer comes from ``handler``; keeps the
    requests it saw in ``requests``. Stop it with :meth:`close` (or ``with``)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._closing = threading.Event()
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers: dict[str, str] = {}
                for key, value in self.headers.items():  # repeated headers joined, as RFC 9110 allows
                    key = key.lower()
                    headers[key] = f"{headers[key]}, {value}" if key in headers else value
                request = Request(self.command, self.path, headers, body)
                outer.requests.append(request)
                reply = outer.handler(request)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(reply.length if reply.length is not None else len(reply.body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                sent = 0
                data = reply.body
                while sent < len(data):
                    if reply.cut_after is not None and sent >= reply.cut_after:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if reply.stall_after is not None and sent >= reply.stall_after and reply.stall_for:
                        outer._closing.wait(reply.stall_for)
                        reply.stall_for = 0.0
                    end = len(data)
                    for limit in (reply.cut_after, reply.stall_after):
                        if limit is not None and limit > sent:
                            end = min(end, limit)
                    end = min(end, sent + reply.chunk)
                    self.wfile.write(data[sent:end])
                    sent = end
                if reply.length is not None and reply.length > len(data):
                    self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def forward(upstream_port: int, request: Request) -> Reply:
    """Send ``request`` on to ``127.0.0.1:<upstream_port>`` (without its Authorization) and
    return the answer as a Reply: a scripted front for a real registry."""
    connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
    try:
        headers = {k: v for k, v in request.headers.items() if k not in ("authorization", "host", "content-length")}
        connection.request(request.method, request.path, body=request.body or None, headers=headers)
        response = connection.getresponse()
        body = response.read()
        kept = {k: v for k, v in response.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "date")}
        if request.method == "HEAD":
            length = response.getheader("Content-Length")
            return Reply(response.status, kept, b"", length=int(length) if length else 0)
        return Reply(response.status, kept, body)
    finally:
        connection.close()


def json_reply(status: int, doc: object, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode())


@contextlib.contextmanager
def scripted(handler: Handler) -> Iterator[ScriptedServer]:
    server = ScriptedServer(handler)
    try:
        yield server
    finally:
        server.close()
