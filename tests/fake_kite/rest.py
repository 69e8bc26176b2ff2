"""HTTP plumbing for the fake: a threaded http.server that hands each request to FakeKite, and the sender
that POSTs order postbacks to the app.

Every response leaves in a single write with TCP_NODELAY set (`disable_nagle_algorithm`), so a client on
a kept-alive connection never waits out the ~44 ms delayed-ACK stall (see /work/shared/STACK.md); postbacks
set TCP_NODELAY too, since http.client writes a request's headers and body separately."""
from __future__ import annotations

import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from tests.fake_kite.core import FakeKite

JSON = "application/json"
CSV = "text/csv"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    json: Any
    headers: dict[str, str]

    def arg(self, name: str, default: str | None = None) -> str | None:
        """A form field (POST/PUT) or query parameter (GET/DELETE), as Kite reads it."""
        values = self.form.get(name) or self.query.get(name)
        return values[0] if values else default

    def params(self) -> dict[str, str]:
        """Every query parameter and form field as sent (first value of each; form wins, as in arg())."""
        return {name: values[0] for name, values in {**self.query, **self.form}.items() if values}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0  # hold the answer this long before sending it
    drop: bool = False  # after the delay, close the connection without answering


def ok(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps({"status": "success", "data": data}).encode())


def error(status: int, error_type: str, message: str) -> Response:
    return Response(status, json.dumps({"status": "error", "message": message, "data": None,
                                        "error_type": error_type}).encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "fake-kite"
    sys_version = ""
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type", "")
        form: dict[str, list[str]] = {}
        body: Any = None
        if "json" in content_type and raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        elif raw:
            form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        request = Request(self.command, split.path or "/", parse_qs(split.query, keep_blank_values=True), form, body,
                          {k.lower(): v for k, v in self.headers.items()})
        response = self.server.fake._handle_http(request)
        if response.delay > 0:
            self.server.fake._stopping.wait(response.delay)
        if response.drop:
            self.close_connection = True
            return
        self._write(response)

    def _write(self, response: Response) -> None:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {phrase}", f"Server: {self.server_version}",
                 f"Date: {self.date_time_string()}", f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + (b"" if self.command == "HEAD" else response.body))
        except OSError:  # the client gave up (e.g. its timeout fired during a stall)
            self.close_connection = True
        if self.server.fake.verbose:
            self.log_request(response.status, len(response.body))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # kept-alive connections must not hold up stop()
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, fake: "FakeKite", host: str, port: int) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__((host, port), _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def close_all(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RestServer:
    def __init__(self, fake: "FakeKite", host: str, port: int) -> None:
        self._server = _Server(fake, host, port)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-kite-rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_all()
        self._server.server_close()
        self._thread.join(timeout=2)

    def drop_connections(self) -> None:
        """Cut every kept-alive client connection (the next request reconnects)."""
        self._server.close_all()


class PostbackSender:
    """One thread POSTs postbacks (JSON) in the order they were queued, so an order's updates arrive in order,
    each no earlier than its due time (time.monotonic()). Each outcome, the HTTP status or the error, goes to
    `record`. A thread per postback would compete for the CPU the system under test runs on."""

    def __init__(self, record: Callable[[dict[str, Any], int | str], None], timeout: float = 3.0) -> None:
        self.timeout = timeout
        self._record = record
        self._queue: queue.SimpleQueue[tuple[float, str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-kite-postbacks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop now; postbacks still queued are never sent."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=self.timeout + 1)

    def send(self, url: str, payload: dict[str, Any], due: float) -> None:
        self._queue.put((due, url, payload))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            due, url, payload = item
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._record(payload, self._post(url, payload))

    def _post(self, url: str, payload: dict[str, Any]) -> int | str:
        parts = urlsplit(url)
        connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        conn = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=self.timeout)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                         body=json.dumps(payload).encode(), headers={"Content-Type": JSON})
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, HTTPException) as exc:  # refused, reset, timed out: recorded, never retried
            return f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
