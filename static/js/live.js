// Live updates: a Socket.IO push refreshes the page's live fragments at once; while the socket is down the
// same fragments are re-fetched every 5 s. The indicator says which: live, polling or offline. Between
// state changes the listener pushes the prices of the user's instruments (within ~100 ms of a change, at most
// once a second each): last prices and P&L are marked here at once, and the chart grows ("live-prices" event).
(function () {
  "use strict";
  var POLL_MS = 5000;
  var indicator = document.getElementById("live-indicator");
  var pollTimer = null;
  window.liveEvents = [];  // what this page has received (also read by the browser tests)

  function setState(state) {
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.textContent = state;
  }

  // The server's money format (webapp/money.py): ₹1,23,456.50, −₹62.00.
  function inr(value) {
    var text = Math.abs(value).toLocaleString("en-IN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
    return (value < 0 && text !== "0.00" ? "\u2212" : "") + "\u20b9" + text;
  }

  function percent(value) {
    var text = Math.abs(value).toFixed(2);
    return (value < 0 && text !== "0.00" ? "\u2212" : "") + text + "%";
  }

  // P&L as the status service marks it: (price − entry) × direction × position, and of the entry value.
  function mark(key, price) {
    document.querySelectorAll('[data-price-of="' + key + '"]').forEach(function (el) { el.textContent = inr(price); });
    document.querySelectorAll('[data-pnl-of="' + key + '"]').forEach(function (el) {
      var entry = parseFloat(el.dataset.entry), gain = (price - entry) * parseInt(el.dataset.sign, 10);
      var pnl = Math.round(gain * parseInt(el.dataset.position, 10) * 100) / 100;
      el.textContent = inr(pnl) + " (" + percent(gain / entry * 100) + ")";
      el.classList.toggle("pnl-up", pnl > 0);
      el.classList.toggle("pnl-down", pnl < 0);
    });
  }

  function refresh() {
    document.querySelectorAll("[data-live]").forEach(function (el) { htmx.trigger(el, "live-refresh"); });
  }

  function startPolling() {
    if (pollTimer) return;
    setState("polling");
    pollTimer = setInterval(refresh, POLL_MS);
  }

  function stopPolling() {
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  document.body.addEventListener("htmx:sendError", function () { setState("offline"); });
  document.body.addEventListener("htmx:afterRequest", function (e) {
    if (e.detail.successful && indicator && indicator.dataset.state === "offline") {
      setState(typeof socket !== "undefined" && socket.connected ? "live" : "polling");
    }
  });

  // A page with nothing live has no connection to speak of: the badge would say "connecting" for ever.
  if (!document.querySelector("[data-live]")) { if (indicator) indicator.hidden = true; return; }
  if (typeof io === "undefined") { startPolling(); return; }  // the socket library did not load: poll
  var socket = io({ transports: ["websocket"], reconnectionDelayMax: 10000 });
  socket.on("connect", function () { stopPolling(); setState("live"); refresh(); });
  socket.on("disconnect", startPolling);
  socket.on("connect_error", startPolling);
  socket.on("runtime", function (data) {
    window.liveEvents.push(data);
    // A success message told what an action did then ("Running: BUY at …"); once the state has moved on it
    // no longer describes the present. (A refusal stays: it says why nothing happened.)
    document.querySelectorAll(".flash-success").forEach(function (el) { el.remove(); });
    refresh();
  });
  socket.on("prices", function (data) {
    window.livePrices = (window.livePrices || 0) + 1;
    Object.keys(data.prices).forEach(function (key) { mark(key, data.prices[key]); });
    document.dispatchEvent(new CustomEvent("live-prices", { detail: data }));
  });
  startPolling();  // until the socket says it is up
})();
