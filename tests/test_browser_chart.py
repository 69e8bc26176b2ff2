"""The strategy page's chart in Debian's chromium, through real worker, scheduler and listener processes, a
scripted feed with a gap in it: the axes say 24-hour IST and whole Indian-grouped prices, the gap breaks the
line (a null in the series) instead of drawing it flat, the labels drawn on the canvas never overlap (their
boxes are on the holder as data-labels), and the page, its orders included, fits a phone. Screenshots at
1280×800 and 390×844 under tests/artifacts/."""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

from tests.engine_helpers import csv_feed, seconds_ahead
from tests.helpers import STRATEGY
from tests.test_browser_live import sign_up
from tests.test_browser_onboarding import fill_strategy, watch_for_errors

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def app_overrides() -> dict:
    return {"TRADING_CALENDAR": "always"}


# Drawn, with a gap (an attribute not yet written, or "[]", is neither).
DRAWN_GAP = re.compile(r"^\[\[.+\]\]$")


def overlapping(boxes: list[dict]) -> list[tuple[str, str]]:
    return [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]]


def labels(page: Page) -> list[dict]:
    return json.loads(page.locator("#price-chart").get_attribute("data-labels") or "[]")


def axis_texts(page: Page, axis: str) -> list[str]:
    """What uPlot wrote on an axis (it draws them on the canvas; chart.js keeps its formatters' output)."""
    return [line for text in json.loads(page.locator("#price-chart").get_attribute(f"data-{axis}-ticks") or "[]")
            for line in text.split("\n")]


def check_chart(page: Page) -> None:
    times = axis_texts(page, "x")
    assert times and all(re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?|\d{1,2} [A-Z][a-z]{2}", t) for t in times), times
    assert not any(re.search(r"am|pm|/", t, re.I) for t in times), times
    assert len(set(times)) == len(times), times  # no time printed twice (sub-second steps did over a short run)
    prices = axis_texts(page, "y")
    assert prices and all(re.fullmatch(r"\d{1,2}(,\d\d)*,?\d{0,3}(\.\d\d)?|\d{1,3}(\.\d\d)?", p) for p in prices), prices
    boxes = labels(page)
    assert any(b["text"].startswith("stop ") for b in boxes) and any(b["text"].startswith("BUY ") for b in boxes), boxes
    assert overlapping(boxes) == [], boxes
    size = page.locator("#price-chart").bounding_box()
    assert all(b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["w"] <= size["width"] + 0.5 for b in boxes), (boxes, size)


def test_the_chart_breaks_at_a_gap_speaks_ist_and_keeps_its_labels_apart(page: Page, live_server, engine, artifacts,
                                                                          tmp_path):
    problems = watch_for_errors(page)
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_up(page, live_server, "chart@example.com")
    page.goto(f"{live_server}/strategies/new")
    fill_strategy(page, {**STRATEGY, "name": "Chart INFY", "buy_time": seconds_ahead(6), "sell_time": seconds_ahead(600),
                         "stop_loss": "1512.50"})
    page.get_by_role("button", name="Create strategy").click()
    page.click("#start-button")
    expect(page.locator("#status")).to_have_text("Waiting to enter")
    # Ticks each second for 6 s, nothing for 10 s (the gap: > 3 sampling intervals of 2 s), then ticks again.
    rows = [(float(t), "INFY", 1520.0 + 0.5 * t) for t in range(7)] + \
           [(float(t), "INFY", 1523.0 + 0.25 * (t - 17)) for t in range(17, 40)]
    engine.env = {**engine.env, "FEED": csv_feed(tmp_path, "gap", rows)}
    engine.start("listener", "jobs.listener")
    expect(page.locator("#status")).to_have_text("In position", timeout=15_000)
    chart = page.locator("#price-chart")
    expect(chart).to_have_attribute("data-markers", "1", timeout=10_000)
    expect(chart).to_have_attribute("data-gaps", DRAWN_GAP, timeout=30_000)  # the second run of ticks starts 17 s after the listener
    page.reload()  # drawn again from the server's samples alone
    expect(chart).to_have_attribute("data-gaps", DRAWN_GAP, timeout=5_000)
    gaps = json.loads(chart.get_attribute("data-gaps"))
    assert len(gaps) == 1 and 6 < gaps[0][1] - gaps[0][0] < 16, gaps
    assert int(chart.get_attribute("data-nulls")) == 1
    x_range = page.evaluate("(() => { const c = document.querySelector('#price-chart canvas'); return c.width; })()")
    assert x_range > 0
    check_chart(page)
    page.screenshot(path=str(artifacts / "chart-1280x800.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    expect(chart).to_have_attribute("data-gaps", DRAWN_GAP, timeout=5_000)
    check_chart(page)
    wide = page.evaluate("""[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1)
        .map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)).slice(0, 12)""")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), wide
    order = page.locator("#order-log tbody tr").first
    assert order.bounding_box()["width"] <= 390
    expect(order).to_contain_text("Entry")
    expect(order).to_contain_text("COMPLETE")
    page.screenshot(path=str(artifacts / "chart-390x844.png"), full_page=True)

    # Crowded labels: an entry, a stop-loss exit a second later at nearly the same price, and the stop beside
    # them. The chart's data, replaced in the browser, is drawn with no two labels on top of each other.
    data = page.evaluate("fetch(document.getElementById('price-chart').dataset.src).then(r => r.json())")
    t0 = data["ticks"][-1][0]
    data["markers"] = [{"t": t0 - 2, "price": 1513.0, "side": "BUY", "event": "BUY"},
                       {"t": t0 - 1, "price": 1512.4, "side": "SELL", "event": "STOPLOSS"}]
    data["stop"], data["stop_loss"], data["target"] = [[t0 - 2, 1512.5]], 1512.5, 1513.5
    page.route(re.compile(r"/api/v1/strategy/\d+/chart$"), lambda route: route.fulfill(json=data))
    page.reload()
    expect(chart).to_have_attribute("data-markers", "2", timeout=5_000)
    boxes = labels(page)
    assert len(boxes) >= 4 and overlapping(boxes) == [], boxes
    page.screenshot(path=str(artifacts / "chart-crowded-390x844.png"))
    assert problems == []
