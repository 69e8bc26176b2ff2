// Live updates: a Socket.IO push refreshes the page's live fragments at once; while the socket is down the
// same fragments are re-fetched every 5 s. The indicator says which: live, polling or offline.
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

  if (!document.querySelector("[data-live]")) return;
  if (typeof io === "undefined") { startPolling(); return; }  // the socket library did not load: poll
  var socket = io({ transports: ["websocket"], reconnectionDelayMax: 10000 });
  socket.on("connect", function () { stopPolling(); setState("live"); refresh(); });
  socket.on("disconnect", startPolling);
  socket.on("connect_error", startPolling);
  socket.on("runtime", function (data) {
    window.liveEvents.push(data);
    refresh();
  });
  startPolling();  // until the socket says it is up
})();
