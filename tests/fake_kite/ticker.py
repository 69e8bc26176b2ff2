"""The fake ticker: a websocket server (wsproto over plain threaded sockets) speaking KiteTicker's protocol.

- Handshake: `ws://host:port/?api_key=..&access_token=..` (any path). A wrong or expired token is refused
  with HTTP 403 and a TokenException body; a 4th connection for one api_key with HTTP 429 (Kite allows 3).
- Client text frames: {"a":"subscribe","v":[tokens]} (mode quote, Kite's default),
  {"a":"unsubscribe","v":[tokens]}, {"a":"mode","v":["ltp"|"quote"|"full",[tokens]]} (applies to tokens
  already subscribed). Anything else is ignored.
- Server binary frames: uint16 packet count, then per packet uint16 length + packet, all big-endian.
  Packets: LTP 8 bytes, quote 44, full 184; indices (segment 9) quote 28, full 32. A 1-byte frame is the
  heartbeat, sent every `heartbeat_interval` seconds.
- On subscribe or mode change the current state of each *known* token is sent at once (as Kite sends a
  snapshot); unknown tokens are accepted and kept, and simply never tick (as on Kite).
- Server text frames: {"type":"order","data":{...}} on every order state change for the connection's account.
"""
from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.fake_kite.instruments import Instrument, MarketData, price_divisor

if TYPE_CHECKING:
    from tests.fake_kite.core import Account, FakeKite

log = logging.getLogger(__name__)

MODES = ("ltp", "quote", "full")
HEARTBEAT = b"\x00"


def _u32(value: float) -> int:
    return max(0, min(int(round(value)), 0xFFFFFFFF))


def pack_packet(inst: Instrument, market: MarketData, mode: str) -> bytes:
    """One tick packet in Kite's binary layout for `mode`."""
    div = price_divisor(inst.instrument_token)

    def p(price: float) -> int:
        return _u32(price * div)

    token, ltp = inst.instrument_token, p(market.last_price)
    if mode == "ltp":
        return struct.pack(">II", token, ltp)
    if inst.is_index:
        change = int(round((market.last_price - market.close) * div))  # signed; KiteTicker recomputes it
        packet = struct.pack(">6Ii", token, ltp, p(market.high), p(market.low), p(market.open), p(market.close),
                             change)
        return packet if mode == "quote" else packet + struct.pack(">I", _u32(market.timestamp))
    packet = struct.pack(">11I", token, ltp, _u32(market.last_quantity), p(market.average_price),
                         _u32(market.volume), _u32(market.buy_quantity), _u32(market.sell_quantity),
                         p(market.open), p(market.high), p(market.low), p(market.close))
    if mode == "quote":
        return packet
    packet += struct.pack(">5I", _u32(market.last_trade_time), _u32(market.oi), _u32(market.oi_day_high),
                          _u32(market.oi_day_low), _u32(market.timestamp))
    depth = market.depth(inst.tick_size)
    for level in depth["buy"] + depth["sell"]:
        packet += struct.pack(">IIH2x", _u32(level["quantity"]), p(level["price"]), min(level["orders"], 0xFFFF))
    return packet


def pack_frame(packets: list[bytes]) -> bytes:
    out = [struct.pack(">H", len(packets))]
    for packet in packets:
        out.append(struct.pack(">H", len(packet)))
        out.append(packet)
    return b"".join(out)


class TickerConnection:
    """One client link: a reader thread; sends from any thread under `lock`."""

    def __init__(self, server: "TickerServer", sock: socket.socket, peer: tuple) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.ws = WSConnection(ConnectionType.SERVER)
        self.lock = threading.RLock()
        self.account: Account | None = None
        self.subscriptions: dict[int, str] = {}
        self.open = False
        self.closed = threading.Event()
        self._text: list[str] = []

    # --- sending -------------------------------------------------------------------------------------
    def _send(self, event: object) -> bool:
        with self.lock:
            if self.closed.is_set():
                return False
            try:
                self.sock.sendall(self.ws.send(event))
                return True
            except Exception:  # broken pipe, or wsproto says the link is closing
                self.abort()
                return False

    def send_binary(self, data: bytes) -> bool:
        return self.open and self._send(BytesMessage(data=data))

    def send_text(self, text: str) -> bool:
        return self.open and self._send(TextMessage(data=text))

    def abort(self) -> None:
        """Cut the TCP link without a close frame (what a network drop looks like to the client)."""
        with self.lock:
            if self.closed.is_set():
                return
            self.closed.set()
            self.open = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def close(self, code: int = 1001, reason: str = "going away") -> None:
        with self.lock:
            if self.open:
                self._send(CloseConnection(code=code, reason=reason))
        self.abort()

    # --- receiving -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except Exception:  # noqa: BLE001 - a fake must never take the server down
            log.debug("ticker connection %s failed", self.peer, exc_info=True)
        finally:
            self.abort()
            self.server.forget(self)

    def _loop(self) -> None:
        while not self.closed.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            with self.lock:
                self.ws.receive_data(data or None)
                events = list(self.ws.events())
            for event in events:
                self._handle(event)
            if not data:
                return

    def _handle(self, event: object) -> None:
        if isinstance(event, Request):
            self._handshake(event)
        elif isinstance(event, TextMessage):
            self._text.append(event.data)
            if event.message_finished:
                text, self._text = "".join(self._text), []
                self._on_text(text)
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, CloseConnection):
            self.open = False
            try:
                with self.lock:
                    self.sock.sendall(self.ws.send(event.response()))
            except Exception:  # noqa: BLE001
                pass
            self.abort()

    def _handshake(self, request: Request) -> None:
        query = parse_qs(urlsplit(request.target).query)
        api_key = (query.get("api_key") or [""])[0]
        access_token = (query.get("access_token") or [""])[0]
        fake = self.server.fake
        account = fake._ticker_account(api_key, access_token)
        if account is None:
            self._reject(403, {"status": "error", "error_type": "TokenException", "data": None,
                               "message": "Incorrect `api_key` or `access_token`."})
            return
        if not self.server.admit(self, account):
            self._reject(429, {"status": "error", "error_type": "NetworkException", "data": None,
                               "message": "Maximum allowed connections exceeded"})
            return
        self.account = account
        if self._send(AcceptConnection()):
            self.open = True
            self.server.fake._ticker_event("connect", self)

    def _reject(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        with self.lock:
            try:
                self.sock.sendall(self.ws.send(RejectConnection(
                    status_code=status, has_body=True,
                    headers=[(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())])))
                self.sock.sendall(self.ws.send(RejectData(data=payload, body_finished=True)))
            except Exception:  # noqa: BLE001
                pass
        self.abort()

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
            action, value = message["a"], message["v"]
        except (ValueError, KeyError, TypeError):
            return
        changed: list[int] = []
        with self.lock:
            if action == "subscribe" and isinstance(value, list):
                tokens = [int(t) for t in value]
                room = self.server.max_tokens - len(set(self.subscriptions) | set(tokens))
                if room < 0:
                    self.send_text(json.dumps({"type": "error", "data": "Maximum 3000 instruments per connection"}))
                    tokens = tokens[:max(0, len(tokens) + room)]
                for token in tokens:
                    self.subscriptions[token] = "quote"
                changed = tokens
            elif action == "unsubscribe" and isinstance(value, list):
                for token in value:
                    self.subscriptions.pop(int(token), None)
            elif action == "mode" and isinstance(value, list) and len(value) == 2 and value[0] in MODES:
                for token in value[1]:
                    if int(token) in self.subscriptions:
                        self.subscriptions[int(token)] = value[0]
                        changed.append(int(token))
        self.server.fake._ticker_event(action, self, changed)
        if changed and self.server.snapshot_on_subscribe:
            self.send_ticks(changed)

    def send_ticks(self, tokens: list[int]) -> bool:
        """Current state of each of `tokens` this link is subscribed to, known to the fake, in one frame."""
        packets = []
        for token in tokens:
            mode = self.subscriptions.get(token)
            found = self.server.fake._lookup_market(token)
            if mode and found:
                packets.append(pack_packet(found[0], found[1], mode))
        return bool(packets) and self.send_binary(pack_frame(packets))


class TickerServer:
    def __init__(self, fake: "FakeKite", host: str, port: int, heartbeat_interval: float = 1.0,
                 max_connections_per_key: int = 3, max_tokens: int = 3000, snapshot_on_subscribe: bool = True) -> None:
        self.fake = fake
        self.heartbeat_interval = heartbeat_interval
        self.max_connections_per_key = max_connections_per_key
        self.max_tokens = max_tokens
        self.snapshot_on_subscribe = snapshot_on_subscribe
        self.connections: list[TickerConnection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in ((self._accept_loop, "fake-kite-ticker-accept"), (self._heartbeat_loop, "fake-kite-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
        except OSError:
            pass
        for conn in self.snapshot():
            conn.abort()
        for thread in self._threads:
            thread.join(timeout=2)
        self._listener.close()

    def snapshot(self) -> list[TickerConnection]:
        with self._lock:
            return list(self.connections)

    def admit(self, conn: TickerConnection, account: "Account") -> bool:
        with self._lock:
            live = [c for c in self.connections if c.open and c.account is not None
                    and c.account.api_key == account.api_key]
            return len(live) < self.max_connections_per_key

    def forget(self, conn: TickerConnection) -> None:
        with self._lock:
            if conn in self.connections:
                self.connections.remove(conn)
        if conn.account is not None:
            self.fake._ticker_event("disconnect", conn)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = TickerConnection(self, sock, peer)
            with self._lock:
                self.connections.append(conn)
            threading.Thread(target=conn.run, name=f"fake-kite-ticker-{peer[1]}", daemon=True).start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            for conn in self.snapshot():
                conn.send_binary(HEARTBEAT)

    def broadcast_ticks(self, tokens: list[int]) -> int:
        """Send the current state of `tokens` to every link subscribed to any of them; returns links reached."""
        reached = 0
        for conn in self.snapshot():
            if conn.open and any(t in conn.subscriptions for t in tokens):
                reached += conn.send_ticks(tokens)
        return reached

    def broadcast_order(self, api_key: str, order: dict) -> int:
        text = json.dumps({"type": "order", "id": "", "data": order})
        reached = 0
        for conn in self.snapshot():
            if conn.open and conn.account is not None and conn.account.api_key == api_key:
                reached += conn.send_text(text)
        return reached

    def drop(self, api_key: str | None = None, clean: bool = False) -> int:
        dropped = 0
        for conn in self.snapshot():
            if api_key is None or (conn.account is not None and conn.account.api_key == api_key):
                if clean:
                    conn.close()
                else:
                    conn.abort()
                dropped += 1
        return dropped


def wait(predicate, timeout: float, interval: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
