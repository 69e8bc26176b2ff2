// The strategy page's price chart (uPlot): today's samples, the stop-loss as a step line that follows a
// trailing stop's moves, the target line, buy/sell time marks and entry/exit markers. Redrawn whenever the
// live panel refreshes (a push, or the 5 s poll).
(function () {
  "use strict";
  var holder = document.getElementById("price-chart");
  if (!holder || typeof uPlot === "undefined") return;
  var plot = null;
  var shown = null;  // the data drawn last: pushed prices grow its line

  // A dashed level from x0 to x1 (canvas px), labelled above its left end, or below its right one.
  function hline(u, ctx, y, x0, x1, color, label, atRight) {
    ctx.strokeStyle = color; ctx.setLineDash([6, 4]); ctx.beginPath();
    ctx.moveTo(x0, y); ctx.lineTo(x1, y); ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillText(label, atRight ? x1 - ctx.measureText(label).width - 8 : x0 + 4, atRight ? y + 14 : y - 4);
  }

  // The stop as the listener moved it: a step line, each level held until the next move (the last until the
  // exit, or the right edge). Before the entry fills there is no series: a price stop is drawn across the day.
  function stopLine(u, ctx, data) {
    var left = u.bbox.left, right = u.bbox.left + u.bbox.width;
    data.markers.forEach(function (m) {  // the run's exit ends the line
      if (m.event !== "BUY") right = Math.min(right, Math.max(left, u.valToPos(m.t, "x", true)));
    });
    var steps = data.stop || [];
    if (!steps.length) {
      if (data.stop_loss != null) hline(u, ctx, u.valToPos(data.stop_loss, "y", true), left, right, "#dc2626", "stop " + data.stop_loss);
      return;
    }
    ctx.strokeStyle = "#dc2626"; ctx.setLineDash([6, 4]); ctx.beginPath();
    steps.forEach(function (step, i) {
      var x = Math.min(Math.max(u.valToPos(step[0], "x", true), left), right);
      var y = u.valToPos(step[1], "y", true);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);  // vertical riser at the move
      var next = i + 1 < steps.length ? Math.min(Math.max(u.valToPos(steps[i + 1][0], "x", true), left), right) : right;
      ctx.lineTo(next, y);
    });
    ctx.stroke();
    var last = steps[steps.length - 1];
    var lastX = Math.min(Math.max(u.valToPos(last[0], "x", true), left), right);
    ctx.fillStyle = "#dc2626";  // labelled where it last moved to
    ctx.fillText((steps.length > 1 ? "trailing stop " : "stop ") + last[1], lastX + 4, u.valToPos(last[1], "y", true) - 4);
  }

  function marks(u, data) {
    var ctx = u.ctx;
    ctx.save();
    ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";  // not as uPlot left them after its axes
    stopLine(u, ctx, data);
    if (data.target != null) {
      hline(u, ctx, u.valToPos(data.target, "y", true), u.bbox.left, u.bbox.left + u.bbox.width, "#15803d",
            "target " + data.target + (data.direction === "short" ? " (short)" : ""), true);
    }
    [["buy", data.buy_at, "#1d4ed8"], ["sell", data.sell_at, "#7c3aed"]].forEach(function (m) {
      var x = u.valToPos(m[1], "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
      ctx.strokeStyle = m[2]; ctx.setLineDash([4, 4]); ctx.beginPath();
      ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.fillStyle = m[2]; ctx.fillText(m[0], x + 3, u.bbox.top + 12);
    });
    data.markers.forEach(function (m) {
      var x = u.valToPos(m.t, "x", true), y = u.valToPos(m.price, "y", true);
      ctx.setLineDash([]); ctx.fillStyle = m.side === "BUY" ? "#15803d" : "#b91c1c";
      ctx.beginPath(); ctx.arc(x, y, 5 * devicePixelRatio, 0, 2 * Math.PI); ctx.fill();
      ctx.fillText(m.event, x + 7, y - 7);
    });
    ctx.restore();
  }

  function draw(data) {
    shown = data;
    var xs = data.ticks.map(function (t) { return t[0]; });
    var ys = data.ticks.map(function (t) { return t[1]; });
    var lo = Math.min(data.buy_at, xs.length ? xs[0] : data.buy_at) - 60;
    var hi = Math.max(data.sell_at, xs.length ? xs[xs.length - 1] : data.sell_at) + 60;
    if (!xs.length) { xs = [lo, hi]; ys = [null, null]; }
    var levels = (data.stop || []).map(function (s) { return s[1]; }).concat([data.stop_loss, data.target]);
    var prices = ys.concat(data.markers.map(function (m) { return m.price; }), levels).filter(function (v) { return v != null; });
    var pad = Math.max(1, (Math.max.apply(null, prices) - Math.min.apply(null, prices)) * 0.1);
    var opts = {
      width: holder.clientWidth, height: 260, legend: { show: false },
      scales: { x: { time: true, range: [lo, hi] },
                y: { range: [Math.min.apply(null, prices) - pad, Math.max.apply(null, prices) + pad] } },
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Asia/Kolkata"); },  // exchange time
      series: [{}, { label: data.symbol, stroke: "#0f172a", width: 1.5 }],
      hooks: { draw: [function (u) { marks(u, data); }] },
    };
    if (plot) plot.destroy();
    plot = new uPlot(opts, [xs, ys], holder);
    holder.dataset.points = String(data.ticks.length);
    holder.dataset.markers = String(data.markers.length);
    holder.dataset.stopSteps = String((data.stop || []).length);
  }

  function load() {
    fetch(holder.dataset.src, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) draw(data); });
  }

  document.addEventListener("live-prices", function (e) {  // static/js/live.js: the line grows each second
    var price = shown && e.detail.prices[shown.symbol];
    if (price == null) return;
    shown.ticks.push([e.detail.t, price]);
    draw(shown);
  });

  document.body.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "strategy-panel") load();
  });
  window.addEventListener("resize", function () { if (plot) plot.setSize({ width: holder.clientWidth, height: 260 }); });
  load();
})();
