"""Dashboard benchmarks: runtime change → DOM updated in a real browser with 200 sockets connected, and
status API throughput, against the real gunicorn web process."""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import threading
import time

import requests
import simple_websocket

from jobs.redis_server import free_port
from tests.bench import harness
from tests.bench.harness import summary

PASSWORD = "bench password 1"


def _web(sysm: harness.System, port: int, threads: int, workers: int = 1) -> None:
    log = open(sysm.workdir / "web.log", "ab")
    sysm.procs.append(subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(workers), "--threads", str(threads),
         "--bind", f"127.0.0.1:{port}", "wsgi:app"], cwd=harness.ROOT, env=sysm.env, stdout=log,
        stderr=subprocess.STDOUT))
    harness.wait_until(lambda: _up(port), 30, interval=0.2)


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _trader(base: str) -> tuple[requests.Session, str, int]:
    """A registered user with a connected broker and one running strategy, logged in by cookie and token."""
    token = requests.post(f"{base}/api/v1/auth/register", json={"email": "bench@example.com",
                                                                "password": PASSWORD}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    requests.post(f"{base}/api/v1/broker/connect", headers=headers, json={
        "api_key": "benchkey1", "api_secret": "benchsecret1", "access_token": "benchtoken1"})
    buy, _ = harness.ist_after(3000)
    sid = requests.post(f"{base}/api/v1/strategy/create", headers=headers, json={
        "name": "bench", "symbol": "INFY", "quantity": 1, "buy_time": buy, "sell_time": "23:59:59",
        "stop_loss": 1}).json()["strategy_id"]
    assert requests.post(f"{base}/api/v1/strategy/{sid}/start", headers=headers).status_code == 200
    session = requests.Session()
    page = session.get(f"{base}/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    session.post(f"{base}/login", data={"email": "bench@example.com", "password": PASSWORD, "csrf_token": csrf})
    return session, token, sid


def _socket(port: int, cookie: str, stop: threading.Event, counter: list[int]) -> None:
    ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
                                         headers={"Cookie": cookie})
    ws.receive()  # Engine.IO open
    ws.send("40")  # Socket.IO connect to "/"
    while not stop.is_set():
        message = ws.receive(timeout=0.5)
        if message == "2":
            ws.send("3")  # pong
        elif isinstance(message, str) and message.startswith("42"):
            counter[0] += 1
    ws.close()


def dom_latency(clients: int = 200, samples: int = 60, workers: int = 2) -> None:
    from playwright.sync_api import sync_playwright

    with harness.system() as sysm:
        app = harness.make_app(sysm)  # creates the schema before the web process serves
        port = free_port()
        _web(sysm, port, threads=clients + 32, workers=workers)
        base = f"http://127.0.0.1:{port}"
        session, _, sid = _trader(base)
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
        stop, received = threading.Event(), [0]
        others = [threading.Thread(target=_socket, args=(port, cookie, stop, received), daemon=True)
                  for _ in range(clients - 1)]
        for thread in others:
            thread.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                               "--disable-component-update", "--disable-sync", "--no-first-run"])
            context = browser.new_context()
            context.add_cookies([{"name": c.name, "value": c.value, "url": base} for c in session.cookies])
            page = context.new_page()
            page.goto(f"{base}/strategies/{sid}")
            page.wait_for_function("() => document.getElementById('live-indicator').textContent === 'live'",
                                   timeout=15000, polling=50)
            latencies = []
            from webapp import keys, live, redis_client
            from webapp.engine import runtime
            from webapp.extensions import db
            from webapp.models import Strategy

            with app.app_context():
                strategy = db.session.get(Strategy, sid)
                for n in range(samples):
                    price = f"{1500 + n}.00"
                    page.evaluate("""price => { window.__seen = null; const target = '₹' + price;
                        const check = () => { const el = document.getElementById('last-price');
                          if (el && el.textContent.trim() === target && !window.__seen) window.__seen = Date.now(); };
                        new MutationObserver(check).observe(document.body, {subtree: true, childList: true,
                          characterData: true}); }""", price)
                    sent = time.time() * 1000
                    runtime.update(redis_client.current(), strategy, last_price=price)
                    redis_client.current().set(keys.last_price("NSE", "INFY"), price)
                    live.notify([strategy])
                    # Interval polling: a headless page may run no animation frames. The figure itself is the
                    # page's own Date.now() at the mutation, so the polling interval does not enter it.
                    page.wait_for_function("() => window.__seen !== null", timeout=10000, polling=20)
                    latencies.append(page.evaluate("window.__seen") - sent)
                    time.sleep(0.05)
            browser.close()
        stop.set()
        print(f"runtime change → DOM updated: {clients} sockets on one user's room (1 browser + "
              f"{clients - 1} raw Engine.IO clients), gunicorn gthread, {workers} processes")
        print("  " + summary("push → DOM", latencies))
        print(f"  pushes received by the other sockets: {received[0]} (expected {samples * (clients - 1)})")


def _hammer(port: int, path: str, token: str, seconds: float, connections: int) -> tuple[int, list[float], float]:
    """Keep-alive GETs from `connections` threads with a minimal client (raw socket, Content-Length framing):
    http.client cost this machine half a core at these rates, CPU the server then did not get. Returns
    (requests, latencies in ms, the client's own CPU seconds)."""
    import resource
    import socket

    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
    latencies, lock = [], threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer, mine = b"", []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            sock.sendall(request)
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].lower()
                    assert head.startswith(b"http/1.1 200"), head[:200]
                    at = head.index(b"content-length: ") + 16
                    line_end = head.find(b"\r\n", at)
                    total = head_end + 4 + int(head[at:line_end if line_end >= 0 else len(head)])
                    if len(buffer) >= total:
                        buffer = buffer[total:]
                        break
                buffer += sock.recv(65536)
            mine.append((time.perf_counter() - started) * 1000)
        sock.close()
        with lock:
            latencies.extend(mine)

    before = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return len(latencies), latencies, cpu


def status_throughput(seconds: float = 10.0, connections: int = 16, workers: int = 2) -> None:
    """GET /api/v1/strategy/status/{id} against gunicorn, for a running strategy (answered from Redis) and
    for a stopped one (answered from the database)."""
    with harness.system() as sysm:
        harness.make_app(sysm)
        port = free_port()
        _web(sysm, port, threads=32, workers=workers)
        _, token, sid = _trader(f"http://127.0.0.1:{port}")
        path = f"/api/v1/strategy/status/{sid}"
        for phase in ("running", "stopped"):
            if phase == "stopped":
                sysm.spawn("jobs.worker")  # STOP is carried out by the engine
                requests.post(f"http://127.0.0.1:{port}/api/v1/strategy/{sid}/stop",
                              headers={"Authorization": f"Bearer {token}"})
                harness.wait_until(lambda: requests.get(f"http://127.0.0.1:{port}{path}", headers={
                    "Authorization": f"Bearer {token}"}).json()["status"] == "stopped", 30)
                sysm.stop_module("jobs.worker")  # measured alone, like the running phase
            count, latencies, cpu = _hammer(port, path, token, seconds, connections)
            print(f"status API, {phase} strategy: {count / seconds:,.0f} requests/s over {seconds:.0f} s, "
                  f"{connections} keep-alive connections, gunicorn gthread {workers} process(es) × 32 threads; "
                  f"the client on the same 2 cores used {cpu / seconds:.0%} of one")
            print("  " + summary(f"GET {path.rsplit('/', 1)[0]}/{{id}}", latencies))
