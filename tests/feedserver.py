"""A real HTTP server for the feed tests, scripted per path: bodies, ETag/304, and faults.

``FeedServer`` is a ``ThreadingHTTPServer`` on a free loopback port, started by the test.
Each path has a ``Route``: the body and validators, a status code, and optionally a fault:

* ``stall``: headers and half the body, then nothing until the server stops;
* ``reset``: headers and half the body, then an RST (SO_LINGER with a zero timeout);
* ``truncate``: a full Content-Length, half the body, then a clean close (FIN);
* ``no-length``: no Content-Length, the body, then close (the size is only known at the end).

Every request is recorded (path and headers) so tests can check what the client sent.
Optionally serves HTTPS with a certificate made by ``make_tls`` (cryptography).
"""

from __future__ import annotations

import datetime
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STALL_LIMIT = 30.0  # a stalled handler gives up at the latest after this (or at shutdown)


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    etag: str | None = None
    last_modified: str | None = None
    fault: str | None = None
    redirect: str | None = None


@dataclass
class Request:
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    server: FeedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}))
            route = srv.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._plain(404, b"no such list\n")
            return
        if route.redirect is not None:
            self.send_response(302)
            self.send_header("Location", route.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route.status != 200:
            self._plain(route.status, b"scripted failure\n")
            return
        if route.etag is not None and self.headers.get("If-None-Match") == route.etag:
            self.send_response(304)
            self.send_header("ETag", route.etag)
            self.end_headers()
            return
        if (route.last_modified is not None and route.etag is None
                and self.headers.get("If-Modified-Since") == route.last_modified):
            self.send_response(304)
            self.end_headers()
            return
        self._body(route)

    def _plain(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self, route: Route) -> None:
        body = route.body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if route.fault != "no-length":
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        if route.etag is not None:
            self.send_header("ETag", route.etag)
        if route.last_modified is not None:
            self.send_header("Last-Modified", route.last_modified)
        self.end_headers()
        if route.fault is None:
            self.wfile.write(body)
            return
        if route.fault == "no-length":
            self.wfile.write(body)
            self.close_connection = True
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        with self.server.lock:
            self.server.partial_sent += 1
        if route.fault == "stall":
            self.server.stopping.wait(STALL_LIMIT)
        elif route.fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # now, before socketserver's shutdown(SHUT_WR) sends a FIN
        self.close_connection = True


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tls = tls
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self.partial_sent = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up early (a size cap, a timeout) is part of the script."""

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes = b"", **kwargs: Any) -> str:
        """Script ``path`` (replacing what it served before); returns its URL."""
        with self.lock:
            self.routes[path] = Route(body, **kwargs)
        return self.url(path)

    def requests_for(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> FeedServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def make_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it: (server context, CA file)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blockgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - day).not_valid_after(now + 2 * day)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - day).not_valid_after(now + 2 * day)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = directory / "server.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain)
    return ctx, ca_file
