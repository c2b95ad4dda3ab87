"""An idle ctrpyd leaves out what only rare calls need (issue 13, idle RSS), and still does them.

OpenSSL's libssl and libcrypto (``ssl`` for asyncio, ``hashlib`` for digests: about 4.6 MiB
resident together), tar and the layer code, server reflection and ``importlib.metadata`` are
imported at their first use. The daemon's mappings show the shared libraries; a fresh
interpreter that imports what ctrpyd imports at start shows the Python modules. The daemon
still hashes content once asked to, and asyncio still speaks TLS once ``ssl`` is imported.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.ctrpyd import Daemon
from tests.support.registry import self_signed

OPENSSL_LIBRARIES = ("libssl.so", "libcrypto.so", "/_ssl.cpython", "/_hashlib.cpython")

# Loaded at first use only (see manager/lazyssl.py, manager/diff/__init__.py,
# manager/services/reflection.py, manager/main.py's --version, manager/content/digests.py).
LEFT_OUT = (
    "ssl", "hashlib", "_hashlib", "hmac", "tarfile", "importlib.metadata", "email",
    "grpc_reflection.v1alpha.reflection", "google.protobuf.descriptor_pb2", "ctrpy.manager.diff.apply",
)  # fmt: skip


def _mapped(pid: int) -> list[str]:
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}
    return sorted(path for path in paths if any(lib in path for lib in OPENSSL_LIBRARIES))


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_idle_daemon_maps_no_openssl_until_content_is_hashed(daemon: Daemon) -> None:
    assert daemon.process is not None
    assert _mapped(daemon.process.pid) == []
    data = b"hashed at the first content written\n"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ingest = daemon.ctr("content", "ingest", "--expected-size", str(len(data)), "--expected-digest", digest,
                        "idle-imports", input=data)
    assert ingest.returncode == 0, ingest.stderr
    listed = daemon.ctr("content", "ls", "-q")
    assert digest in listed.stdout.split(), listed
    assert any("libcrypto.so" in path for path in _mapped(daemon.process.pid))


def test_importing_the_daemon_leaves_out_what_rare_calls_need() -> None:
    loaded = _run(f"""
        import sys
        from ctrpy.manager import lazyssl
        lazyssl.import_asyncio()
        import ctrpy.manager.main, ctrpy.manager.logsetup, ctrpy.manager.server
        print(" ".join(name for name in {LEFT_OUT!r} if name in sys.modules))
    """)
    assert loaded.split() == []


def test_reflection_service_name_is_grpcs() -> None:
    from grpc_reflection.v1alpha import reflection

    from ctrpy.manager.services.reflection import REFLECTION_SERVICE

    assert reflection.SERVICE_NAME == REFLECTION_SERVICE


def test_asyncio_speaks_tls_once_ssl_is_imported(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    answer = _run(f"""
        import sys
        from ctrpy.manager import lazyssl
        lazyssl.import_asyncio()
        import asyncio
        assert "ssl" not in sys.modules and asyncio.sslproto.ssl is None
        import ssl
        assert asyncio.base_events.ssl is ssl and asyncio.selector_events.ssl is ssl and asyncio.sslproto.ssl is ssl

        async def main() -> bytes:
            server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_side.load_cert_chain({str(cert)!r}, {str(key)!r})

            async def echo(reader, writer):
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_side)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ssl.create_default_context(cafile={str(cert)!r}))
            writer.write(b"over tls\\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            server.close()
            await server.wait_closed()
            return line

        print(asyncio.run(main()).decode().strip())
    """)
    assert answer.strip() == "over tls"


def test_version_flag_still_prints_the_distributions_version() -> None:
    from ctrpy.version import version

    result = subprocess.run([sys.executable, "-m", "ctrpy.manager.main", "--version"], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, f"ctrpyd {version()}\n")
