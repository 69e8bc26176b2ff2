"""The floor of the herd benchmark, measured in the same run: the paper exchange alone, driven the way the
engine drives it (one process per worker, ORDER_THREADS threads, Kite's rate limits, fills pushed) but with
no engine at all: no queue, no lock, no database, no state published. Whatever the herd takes beyond this
is the engine's own cost.

Run as `python -m tests.bench.floor <first_account> <accounts> <per_account> <start_epoch>` with the
system's environment; prints one JSON line: when each order reached the exchange and was filled, and the
process's CPU seconds over the burst."""
from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def main(first_account: int, accounts: int, per_account: int, start: float) -> None:
    from webapp import create_app, redis_client
    from webapp.brokers import OrderRequest, get_broker, updates

    app = create_app(process_name="bench-floor")
    threads = app.config["ORDER_THREADS"]
    ready = threading.Barrier(threads + 1)

    def warm(_: int) -> None:
        with app.app_context():
            redis_client.current().ping()
        ready.wait()

    def order(n: int) -> tuple[float, float]:
        account = first_account + n % accounts
        with app.app_context():
            broker = get_broker("paper", account)
            watch = updates.watch(redis_client.current())
            order_id = broker.place_order(OrderRequest("NSE", "INFY", "BUY", 1, "MIS", f"F{account}x{n}"))
            placed = time.time()
            waiter = watch.expect(order_id)
            while not waiter.event.wait(1.0):
                if broker.order_status(order_id).final:
                    break
            watch.done(order_id)
            return placed, time.time()

    with ThreadPoolExecutor(threads) as pool:
        for n in range(threads):
            pool.submit(warm, n)
        ready.wait()
        with app.app_context():
            updates.watch(redis_client.current())
        time.sleep(max(0.0, start - time.time()))
        cpu = time.process_time()
        results = list(pool.map(order, range(accounts * per_account)))
        cpu = time.process_time() - cpu
    print(json.dumps({"placed": [p - start for p, _ in results], "filled": [f - start for _, f in results],
                      "cpu": cpu}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
