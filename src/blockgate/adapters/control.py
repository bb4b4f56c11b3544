"""Control channels: supervisor <-> worker messages, and the status socket.

* ``Channel``: one end of a ``SOCK_SEQPACKET`` socketpair between the supervisor and one
  worker. A message is one packet (boundaries kept by the kernel), pickled: both ends are
  the same program, forked, so nothing untrusted is ever unpickled. Closing either end
  shows up as end-of-file on the other (a worker whose supervisor died stops).
* ``ControlServer``: a unix stream socket (``state_dir/control.sock``, mode 0600) answering
  one JSON document per connection; ``request`` is its client (``blockgate status``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
from collections.abc import Callable
from typing import Any, Final

# One message: a command, or a worker's counters (a few kB; the bound is for a corrupt peer).
MAX_MESSAGE: Final = 1 << 22
# A status client gets this long to send its request and read the answer.
CLIENT_TIMEOUT: Final = 2.0
STATUS_SOCKET: Final = "control.sock"


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple[Channel, Channel]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any) -> bool:
        """Send one message; False if the peer is gone (or not reading: never blocks)."""
        try:
            self.sock.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL), socket.MSG_DONTWAIT)
            return True
        except OSError:
            return False

    def receive(self) -> list[Any] | None:
        """Every message waiting (without blocking); None once the peer has closed its end."""
        out: list[Any] = []
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out or None
            if not data:
                return out or None
            with contextlib.suppress(pickle.UnpicklingError, EOFError, AttributeError, ValueError):
                out.append(pickle.loads(data))

    def close(self) -> None:
        self.sock.close()


class ControlServer:
    """Answers ``status`` (and anything else ``answer`` knows) with one JSON document."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a daemon that was killed
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle(self, answer: Callable[[str], dict[str, Any]]) -> None:
        """Serve the connections waiting (called when the socket is readable)."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(CLIENT_TIMEOUT)
                try:
                    command = _read_line(conn)
                    conn.sendall(json.dumps(answer(command), ensure_ascii=False).encode() + b"\n")
                except OSError:
                    continue

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _read_line(conn: socket.socket) -> str:
    buf = b""
    while b"\n" not in buf and len(buf) < 1024:
        chunk = conn.recv(1024)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("ascii", "replace").strip()


def request(path: str, command: str = "status", timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    """Ask a running daemon. raises OSError (not running, no permission) or ValueError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode("ascii") + b"\n")
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    doc = json.loads(b"".join(chunks))
    if not isinstance(doc, dict):
        raise ValueError("not a status document")
    return doc
