"""A real HTTP server on 127.0.0.1 for `pipeline download`'s tests: images and the faults the
web gives (errors, throttling, slow and endless bodies, redirects, lies about content, resets).

It counts simultaneous connections (it is one host to the client) and remembers each request's
path, time and User-Agent. Handler threads are joined when the server stops, and every slow
handler waits on the server's stop event rather than sleeping, so stopping is immediate.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TRICKLE_GAP = 6.0  # seconds between the bytes of /trickle (tests use a shorter read timeout)
BLOCK = b"\xff" * 65536
SERVER_THREAD = "fault-server"  # the accepting thread; each connection's is "...request_thread"


class FaultServer(ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close(): no thread outlives the test
    block_on_close = True

    def __init__(self, images: dict[str, bytes], delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), Handler)
        self.images = images  # name -> JPEG bytes, served at /img/<name>
        self.delay = delay  # seconds added to every answer
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.max_connections = 0
        self.hits: Counter = Counter()  # path -> requests
        self.log: list[tuple[str, float, str]] = []  # (path, monotonic time, User-Agent)
        self.held: list[int] = []  # client ports of the requests /hold/ keeps unanswered

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address) -> None:
        """A client that hung up mid-answer is expected here (timeouts, --max-bytes)."""

    @property
    def open_connections(self) -> int:
        with self.lock:
            return sum(not _hung_up(s) for s in self.connections)

    def connection_opened(self, connection: socket.socket) -> None:
        """Count the connections the client holds open, this one included. One the client has
        already closed (its handler thread has not noticed yet: a slow body between two
        writes) no longer counts: the client let go of it before it connected again."""
        with self.lock:
            self.connections = {s for s in self.connections if not _hung_up(s)}
            self.connections.add(connection)
            self.max_connections = max(self.max_connections, len(self.connections))

    def connection_closed(self, connection: socket.socket) -> None:
        with self.lock:
            self.connections.discard(connection)


def _hung_up(connection: socket.socket) -> bool:
    """Whether the client closed (or reset) this connection: a peek without waiting finds its
    end or an error. The peek goes through a duplicate of the socket: the handler's own socket
    has a timeout, and Python then waits for data before any recv, whatever its flags; a
    connection whose handler had just read its request made that wait last until the client
    gave up, with the server's lock held (every other request stalled behind it)."""
    try:
        with socket.socket(fileno=os.dup(connection.fileno())) as probe:
            return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:  # nothing to read now: still open
        return False
    except OSError:  # reset, or closed here (a closed socket has no descriptor)
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    timeout = 5  # an idle kept-alive connection ends its thread after this
    server: FaultServer

    def setup(self) -> None:
        super().setup()
        self.server.connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.connection_closed(self.connection)

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        with self.server.lock:
            self.server.hits[self.path] += 1
            hit = self.server.hits[self.path]
            self.server.log.append((self.path, time.monotonic(),
                                    self.headers.get("User-Agent", "")))
        if self.server.delay:
            self.server.stopping.wait(self.server.delay)
        kind, _, rest = self.path.lstrip("/").partition("/")
        getattr(self, f"serve_{kind.replace('-', '_')}", self.serve_missing)(rest, hit)

    # -- answers ---------------------------------------------------------------------------------
    def send(self, code: int, body: bytes = b"", kind: str = "image/jpeg", **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def head(self, length: int | None, **headers: str) -> None:
        """A 200 image answer's headers, for the answers that then misbehave."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True

    def image(self, name: str) -> bytes:
        return self.server.images[name.split("?")[0]]

    def serve_img(self, name: str, _hit: int) -> None:
        if name.split("?")[0] not in self.server.images:
            return self.serve_missing(name, _hit)
        self.send(200, self.image(name))

    def serve_missing(self, _rest: str, _hit: int) -> None:
        self.send(404, b"<html>not found</html>", "text/html")

    def serve_flaky(self, name: str, hit: int) -> None:
        """500 on the first request, the image after."""
        if hit == 1:
            self.send(500, b"oops", "text/plain")
        else:
            self.send(200, self.image(name))

    def serve_busy(self, name: str, hit: int) -> None:
        """429 with Retry-After: 1 on the first request, the image after."""
        if hit == 1:
            self.send(429, b"slow down", "text/plain", Retry_After="1")
        else:
            self.send(200, self.image(name))

    def serve_trickle(self, _rest: str, _hit: int) -> None:
        """A byte every TRICKLE_GAP seconds of a promised 1000."""
        self.head(1000)
        for _ in range(1000):
            self.wfile.write(b"\xff")
            self.wfile.flush()
            if self.server.stopping.wait(TRICKLE_GAP):
                return

    def serve_endless(self, _rest: str, _hit: int) -> None:
        """An image type and a body that never ends (until the client hangs up)."""
        self.head(None, Connection="close")
        self.wfile.write(b"\xff\xd8\xff\xe0")
        while not self.server.stopping.is_set():
            self.wfile.write(BLOCK)

    def serve_redirect(self, rest: str, _hit: int) -> None:
        """/redirect/<n>/<image>: n hops, then the image."""
        hops, _, name = rest.partition("/")
        target = f"/redirect/{int(hops) - 1}/{name}" if int(hops) > 1 else f"/img/{name}"
        self.send(302, b"", "text/plain", Location=target)

    def serve_loop(self, rest: str, _hit: int) -> None:
        """/loop/a -> /loop/b -> /loop/a ..."""
        self.send(301, b"", "text/plain", Location="/loop/b" if rest == "a" else "/loop/a")

    def serve_html(self, _rest: str, _hit: int) -> None:
        """An HTML page that says it is a JPEG."""
        self.send(200, b"<!DOCTYPE html><html><body>Image not found</body></html>", "image/jpeg")

    def serve_mislabelled(self, name: str, _hit: int) -> None:
        """A JPEG served as text/plain."""
        self.send(200, self.image(name), "text/plain")

    def serve_truncated(self, name: str, _hit: int) -> None:
        """Half the promised body, then the connection closes."""
        body = self.image(name)
        self.head(len(body))
        self.wfile.write(body[: len(body) // 2])

    def serve_gzip(self, name: str, _hit: int) -> None:
        self.send(200, gzip.compress(self.image(name)), Content_Encoding="gzip")

    def serve_reset(self, _rest: str, _hit: int) -> None:
        """The connection is reset (RST) without an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def serve_noai(self, name: str, _hit: int) -> None:
        self.send(200, self.image(name), X_Robots_Tag="noai")

    def serve_hold(self, name: str, hit: int) -> None:
        """The first request is never answered (until the client hangs up or the server
        stops; its client port is in `server.held`, to find the process asking); later ones
        get the image."""
        if hit > 1:
            return self.send(200, self.image(name))
        with self.server.lock:
            self.server.held.append(self.client_address[1])
        while not self.server.stopping.wait(0.05) and not _hung_up(self.connection):
            pass
        self.close_connection = True


@contextmanager
def serving(images: dict[str, bytes], delay: float = 0.0) -> Iterator[FaultServer]:
    """A FaultServer running in a thread for the block; stopped and joined after it."""
    server = FaultServer(images, delay)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=SERVER_THREAD)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        thread.join()
        server.server_close()
