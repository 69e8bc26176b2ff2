"""Run the fake as a process, e.g. for the staging recipe:

    .venv/bin/python -m tests.fake_kite --port 9100 --ws-port 9101
    BROKER=kite KITE_API_ROOT=http://127.0.0.1:9100 KITE_TICKER_ROOT=ws://127.0.0.1:9101 \
        KITE_LOGIN_URL=http://127.0.0.1:9100/connect/login make run

It prints its URLs and the account's credentials, then serves until SIGINT/SIGTERM. Options that make it
behave like the real Kite under load:

    --latency SECONDS         every REST answer leaves this long after the request (e.g. 0.05); requests are
                              served in parallel meanwhile
    --latency-jitter SECONDS  plus or minus up to this much, uniformly, per answer
    --fill-delay SECONDS      an order stays OPEN this long before it fills (COMPLETE)
    --postback-url URL        POST every order update there as Kite's postback JSON (COMPLETE, CANCELLED,
                              REJECTED; UPDATE for a partial fill or a modification), checksum signed with
                              the account's api_secret
    --walk SECONDS            move every price a little each SECONDS and tick it, so charts and triggers have
                              something to do

MARKET and SL-M orders must carry market_protection (-1 or 0 < x <= 100), as on Kite since 2026."""
from __future__ import annotations

import argparse
import random
import signal
import sys
import threading

from tests.fake_kite.core import ORDER_LIMITS, Account, FakeKite
from tests.fake_kite.instruments import DEFAULT_INSTRUMENTS, load_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_kite", description="A local fake Kite Connect.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="REST port (0: any free port)")
    parser.add_argument("--ws-port", type=int, default=9101, help="ticker port (0: any free port)")
    defaults = Account()
    parser.add_argument("--api-key", default=defaults.api_key)
    parser.add_argument("--api-secret", default=defaults.api_secret)
    parser.add_argument("--access-token", default=defaults.access_token)
    parser.add_argument("--request-token", default=defaults.request_token)
    parser.add_argument("--user-id", default=defaults.user_id)
    parser.add_argument("--redirect-url", default=None,
                        help="where /connect/login sends the browser back with request_token (the app's callback)")
    parser.add_argument("--instruments", default=None, help="a CSV in Kite's dump layout (default: built-in list)")
    parser.add_argument("--fill-delay", type=float, default=0.0, metavar="SECONDS",
                        help="seconds an order stays OPEN before filling")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="seconds every REST answer is held")
    parser.add_argument("--latency-jitter", type=float, default=0.0, metavar="SECONDS",
                        help="± seconds of uniform jitter on --latency")
    parser.add_argument("--postback-url", default=None, metavar="URL",
                        help="where to POST order postbacks (default: none)")
    parser.add_argument("--stall-seconds", type=float, default=8.0)
    parser.add_argument("--no-order-limit", action="store_true", help="do not enforce Kite's 10 orders/s")
    parser.add_argument("--walk", type=float, default=0.0, help="random-walk and tick prices every SECONDS")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)

    account = Account(api_key=args.api_key, api_secret=args.api_secret, access_token=args.access_token,
                      request_token=args.request_token, user_id=args.user_id, redirect_url=args.redirect_url)
    instruments = load_csv(args.instruments) if args.instruments else DEFAULT_INSTRUMENTS
    fake = FakeKite([account], instruments, host=args.host, port=args.port, ws_port=args.ws_port,
                    fill_delay=args.fill_delay, stall_seconds=args.stall_seconds, verbose=args.verbose,
                    order_limits=() if args.no_order_limit else ORDER_LIMITS, postback_url=args.postback_url)
    fake.set_latency(args.latency, args.latency_jitter)
    fake.start()
    print(f"fake kite REST   {fake.rest_url}", flush=True)
    print(f"fake kite ticker {fake.ws_url}", flush=True)
    print(f"KITE_API_ROOT={fake.rest_url} KITE_TICKER_ROOT={fake.ws_url} KITE_LOGIN_URL={fake.login_url}",
          flush=True)
    print(f"api_key={account.api_key} api_secret={account.api_secret} access_token={account.access_token} "
          f"request_token={account.request_token} user_id={account.user_id}", flush=True)

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    rng = random.Random(7)
    while not done.wait(args.walk if args.walk > 0 else 3600):
        if args.walk > 0:
            for token, inst in list(fake._instruments.items()):
                market = fake.market(token)
                step = inst.tick_size or 0.05
                moved = max(step, round(market.last_price * (1 + rng.gauss(0, 0.0005)) / step) * step)
                fake.tick(token, round(moved, 2))
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
