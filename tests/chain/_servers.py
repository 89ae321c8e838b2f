"""A local HTTP server for the fetch tests: files, a 1-byte-a-second drip, an endless body."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        path = self.path.split("?")[0]
        self.server.hits.append(path)
        try:
            if path in self.server.files:
                body = self.server.files[path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif path.startswith("/redirect/"):
                self.send_response(302)
                self.send_header("Location", path.removeprefix("/redirect"))
                self.end_headers()
            elif path == "/to-file":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.end_headers()
            elif path == "/drip":  # the body, one byte a second, forever
                self.send_response(200)
                self.send_header("Content-Length", "5000")
                self.end_headers()
                self._drip(b"\0")
            elif path == "/drip-headers":  # the headers never end
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._drip(b"X")
            elif path == "/endless":  # no Content-Length, zeros until the client hangs up
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"\0" * (1 << 16)
                while not self.server.stopping.is_set():
                    self.wfile.write(chunk)
            elif path == "/huge":  # announces a terabyte
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
                self.wfile.write(b"\0" * 1024)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            self.server.dropped += 1  # the client hung up

    def _drip(self, byte: bytes) -> None:
        while not self.server.stopping.is_set():
            self.wfile.write(byte)
            self.wfile.flush()
            self.server.dripped += 1
            self.server.stopping.wait(1.0)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        self.dripped = 0
        self.dropped = 0
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def http_server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        time.sleep(0.05)
