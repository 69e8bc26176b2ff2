// The strategy page's price chart (uPlot): today's samples, the stop-loss as a step line that follows a
// trailing stop's moves, the target line, buy/sell time marks and entry/exit markers. Redrawn whenever the
// live panel refreshes (a push, or the 5 s poll), and grown by pushed prices ("live-prices", static/js/live.js).
// Times are 24-hour IST, prices Indian-grouped. A gap in the samples (longer than 3 sampling intervals) breaks
// the line instead of drawing it flat. Labels drawn on the canvas never overlap: their boxes (CSS px within
// the canvas) are on the holder as data-labels, the gaps as data-gaps, the axes' labels as data-x-ticks/-y-ticks.
(function () {
  "use strict";
  var holder = document.getElementById("price-chart");
  if (!holder || typeof uPlot === "undefined") return;
  var SAMPLE_S = 2, GAP_S = 3 * SAMPLE_S, HEIGHT = 260;
  var plot = null;
  var shown = null;  // the data drawn last: pushed prices grow its line
  var clockSkew = 0;  // server clock − this browser's, from the chart data's "now"
  var timeFmt = new Intl.DateTimeFormat("en-GB", { timeZone: "Asia/Kolkata", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  var secFmt = new Intl.DateTimeFormat("en-GB", { timeZone: "Asia/Kolkata", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
  var dayFmt = new Intl.DateTimeFormat("en-GB", { timeZone: "Asia/Kolkata", day: "numeric", month: "short" });
  var inr0 = new Intl.NumberFormat("en-IN", { maximumFractionDigits: 0 });
  var inr2 = new Intl.NumberFormat("en-IN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  var FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

  function price(v) { return inr2.format(v); }
  function now() { return Date.now() / 1000 + clockSkew; }

  // y-axis: whole rupees when every tick is whole, else 2 decimals; the axis as wide as its widest label.
  function yValues(u, splits) {
    var whole = splits.every(function (v) { return Math.abs(v - Math.round(v)) < 1e-6; });
    var out = splits.map(function (v) { return whole ? inr0.format(v) : inr2.format(v); });
    holder.dataset.yTicks = JSON.stringify(out);  // uPlot draws axes on the canvas: what it wrote, for tests
    return out;
  }
  var measurer = document.createElement("canvas").getContext("2d");
  function ySize(u, values) {
    if (!values) return 50;
    measurer.font = "12px " + FONT;
    var widest = Math.max.apply(null, values.map(function (s) { return measurer.measureText(s).width; }));
    return Math.ceil(widest) + 18;  // tick + gap + label
  }
  var X_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  // x-axis: HH:MM (HH:MM:SS under a minute apart), the date under a label whose day differs from the one before.
  function xValues(u, splits, axisIdx, space, incr) {
    var fmt = incr < 60 ? secFmt : timeFmt;
    var out = splits.map(function (t, i) {
      var d = new Date(t * 1e3), text = fmt.format(d);
      if (i > 0 && dayFmt.format(d) !== dayFmt.format(new Date(splits[i - 1] * 1e3))) text += "\n" + dayFmt.format(d);
      return text;
    });
    holder.dataset.xTicks = JSON.stringify(out);
    return out;
  }

  // Canvas labels: each tries its candidate spots in order and takes the first that is inside the plot and
  // clear of those already placed; if none is, it stacks below the first candidate until clear.
  function Labels(u, ctx) {
    var dpr = devicePixelRatio || 1, boxes = [], pad = 3 * dpr, h = 12 * dpr + 2 * pad;
    var L = u.bbox.left, T = u.bbox.top, R = L + u.bbox.width, B = T + u.bbox.height;
    function clash(b) {
      return b.x < L || b.y < T || b.x + b.w > R || b.y + b.h > B || boxes.some(function (o) {
        return b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h;
      });
    }
    function clamp(b) {
      b.x = Math.max(L, Math.min(b.x, R - b.w)); b.y = Math.max(T, Math.min(b.y, B - b.h)); return b;
    }
    this.place = function (text, color, spots) {  // spots: [x, y] top-left corners, canvas px
      var w = ctx.measureText(text).width + 2 * pad, pick = null;
      for (var i = 0; i < spots.length && !pick; i++) {
        var b = { x: spots[i][0], y: spots[i][1], w: w, h: h };
        if (!clash(b)) pick = b;
      }
      if (!pick) {
        for (var k = 0; k < spots.length && !pick; k++) {
          for (var step = 1; step < 12 && !pick; step++) {
            var dn = clamp({ x: spots[k][0], y: spots[k][1] + step * (h + dpr), w: w, h: h });
            var up = clamp({ x: spots[k][0], y: spots[k][1] - step * (h + dpr), w: w, h: h });
            if (!clash(dn)) pick = dn; else if (!clash(up)) pick = up;
          }
        }
        pick = pick || clamp({ x: spots[0][0], y: spots[0][1], w: w, h: h });
      }
      ctx.setLineDash([]);
      ctx.fillStyle = "rgba(255,255,255,0.88)"; ctx.fillRect(pick.x, pick.y, pick.w, pick.h);
      ctx.strokeStyle = color; ctx.lineWidth = dpr; ctx.strokeRect(pick.x + 0.5, pick.y + 0.5, pick.w - 1, pick.h - 1);
      ctx.fillStyle = color; ctx.fillText(text, pick.x + pad, pick.y + pad);
      boxes.push(pick);
      pick.text = text;
    };
    this.boxes = function () {
      return boxes.map(function (b) {
        return { text: b.text, x: +(b.x / dpr).toFixed(1), y: +(b.y / dpr).toFixed(1), w: +(b.w / dpr).toFixed(1), h: +(b.h / dpr).toFixed(1) };
      });
    };
    this.h = h;
  }

  // A level's label: inside the plot at its right end, above the line (below if taken).
  function levelLabel(u, labels, y, text, color) {
    var dpr = devicePixelRatio || 1, w = u.ctx.measureText(text).width + 6 * dpr;
    var x = u.bbox.left + u.bbox.width - w - 4 * dpr;
    labels.place(text, color, [[x, y - labels.h - 2 * dpr], [x, y + 2 * dpr]]);
  }

  function dashed(ctx, color, pts) {
    ctx.strokeStyle = color; ctx.lineWidth = devicePixelRatio || 1; ctx.setLineDash([6, 4]); ctx.beginPath();
    pts.forEach(function (p, i) { if (i === 0) ctx.moveTo(p[0], p[1]); else ctx.lineTo(p[0], p[1]); });
    ctx.stroke();
  }

  // The stop as the listener moved it: a step line, each level held until the next move (the last until the
  // exit, or the right edge). Before the entry fills there is no series: a price stop is drawn across the plot.
  function stopLine(u, ctx, data, labels) {
    var left = u.bbox.left, right = u.bbox.left + u.bbox.width;
    var exitAt = null;
    data.markers.forEach(function (m, i) { if (i > 0 || m.event !== "BUY") exitAt = m.t; });
    if (exitAt != null) right = Math.min(right, Math.max(left, u.valToPos(exitAt, "x", true)));
    var steps = data.stop || [];
    if (!steps.length) {
      if (data.stop_loss == null) return;
      var y0 = u.valToPos(data.stop_loss, "y", true);
      dashed(ctx, "#dc2626", [[left, y0], [right, y0]]);
      levelLabel(u, labels, y0, "stop " + price(data.stop_loss), "#dc2626");
      return;
    }
    var pts = [];
    steps.forEach(function (step, i) {
      var x = Math.min(Math.max(u.valToPos(step[0], "x", true), left), right), y = u.valToPos(step[1], "y", true);
      pts.push([x, y]);  // vertical riser at the move
      var next = i + 1 < steps.length ? Math.min(Math.max(u.valToPos(steps[i + 1][0], "x", true), left), right) : right;
      pts.push([next, y]);
    });
    dashed(ctx, "#dc2626", pts);
    var last = steps[steps.length - 1];
    levelLabel(u, labels, u.valToPos(last[1], "y", true), (steps.length > 1 ? "trailing stop " : "stop ") + price(last[1]), "#dc2626");
  }

  var EVENT_WORDS = { STOPLOSS: "stop-loss", TARGET: "target", STOP: "stopped", KILL: "kill switch", FAIL: "failure" };

  function marks(u, data) {
    var ctx = u.ctx, dpr = devicePixelRatio || 1;
    ctx.save();
    ctx.font = (11 * dpr) + "px " + FONT;
    ctx.textAlign = "left"; ctx.textBaseline = "top";  // not as uPlot left them after its axes
    var labels = new Labels(u, ctx);
    var top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
    // markers' dots first, their labels placed before the levels' (a fill is what the trader looks for)
    data.markers.forEach(function (m) {
      var x = u.valToPos(m.t, "x", true), y = u.valToPos(m.price, "y", true);
      ctx.setLineDash([]); ctx.fillStyle = m.side === "BUY" ? "#15803d" : "#b91c1c";
      ctx.beginPath(); ctx.arc(x, y, 4.5 * dpr, 0, 2 * Math.PI); ctx.fill();
    });
    data.markers.forEach(function (m, i) {
      var x = u.valToPos(m.t, "x", true), y = u.valToPos(m.price, "y", true);
      var text = m.side + " " + price(m.price) + (EVENT_WORDS[m.event] ? " (" + EVENT_WORDS[m.event] + ")" : "");
      var w = ctx.measureText(text).width + 6 * dpr, h = labels.h, g = 8 * dpr;
      var above = [x + g, y - h - g], below = [x + g, y + g], aboveL = [x - w - g, y - h - g], belowL = [x - w - g, y + g];
      var spots = i % 2 === 0 ? [above, below, aboveL, belowL] : [below, above, belowL, aboveL];
      labels.place(text, m.side === "BUY" ? "#15803d" : "#b91c1c", spots);
    });
    stopLine(u, ctx, data, labels);
    if (data.target != null) {
      var yt = u.valToPos(data.target, "y", true);
      dashed(ctx, "#15803d", [[u.bbox.left, yt], [u.bbox.left + u.bbox.width, yt]]);
      levelLabel(u, labels, yt, "target " + price(data.target) + (data.direction === "short" ? " (short)" : ""), "#15803d");
    }
    [["buy", data.buy_at, "#1d4ed8"], ["sell", data.sell_at, "#7c3aed"]].forEach(function (m) {
      var x = u.valToPos(m[1], "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
      ctx.lineWidth = dpr; ctx.strokeStyle = m[2]; ctx.setLineDash([4, 4]); ctx.beginPath();
      ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
      var text = m[0] + " " + secFmt.format(new Date(m[1] * 1e3)), w = ctx.measureText(text).width + 6 * dpr;
      labels.place(text, m[2], [[x + 3 * dpr, top + 2 * dpr], [x - w - 3 * dpr, top + 2 * dpr], [x + 3 * dpr, bottom - labels.h - 2 * dpr]]);
    });
    ctx.restore();
    holder.dataset.labels = JSON.stringify(labels.boxes());
  }

  // The samples with a null after each one followed by a gap: uPlot breaks the line there (spanGaps off).
  function series(ticks) {
    var xs = [], ys = [], gaps = [];
    ticks.forEach(function (t, i) {
      if (i > 0 && t[0] - ticks[i - 1][0] > GAP_S) {
        gaps.push([ticks[i - 1][0], t[0]]);
        xs.push(ticks[i - 1][0] + SAMPLE_S); ys.push(null);
      }
      xs.push(t[0]); ys.push(t[1]);
    });
    return { xs: xs, ys: ys, gaps: gaps };
  }

  // Focus on the data: from the first sample (or the buy time, if earlier) to the later of the last sample
  // and now (while the run can still be going), with a margin; the sell time is included when near.
  function xRange(data, xs) {
    var first = xs.length ? xs[0] : null, last = xs.length ? xs[xs.length - 1] : null, t = now();
    var live = t < data.sell_at + 120;
    var lo = first == null ? Math.min(data.buy_at, t) : Math.min(first, data.buy_at);
    var hi = Math.max(last == null ? data.buy_at : last, live ? t : -Infinity, data.buy_at);
    data.markers.forEach(function (m) { lo = Math.min(lo, m.t); hi = Math.max(hi, m.t); });
    var margin = Math.max(3, (hi - lo) * 0.04);
    if (data.sell_at <= hi + 2 * margin) hi = Math.max(hi, data.sell_at);
    return [lo - margin, hi + margin];
  }

  function draw(data) {
    shown = data;
    var s = series(data.ticks), xs = s.xs, ys = s.ys;
    var range = xRange(data, xs);
    if (!xs.length) { xs = range.slice(); ys = [null, null]; }
    var levels = (data.stop || []).map(function (p) { return p[1]; }).concat([data.stop_loss, data.target]);
    var prices = ys.concat(data.markers.map(function (m) { return m.price; }), levels).filter(function (v) { return v != null; });
    if (!prices.length) prices = [0];
    var lo = Math.min.apply(null, prices), hi = Math.max.apply(null, prices);
    var pad = Math.max(1, (hi - lo) * 0.12);
    var axis = { font: "12px " + FONT, stroke: "#475467", grid: { stroke: "#eef0f3", width: 1 }, ticks: { stroke: "#d0d5dd", width: 1, size: 4 } };
    var opts = {
      width: holder.clientWidth, height: HEIGHT, legend: { show: false }, cursor: { show: false },
      scales: { x: { time: true, range: range }, y: { range: [lo - pad, hi + pad] } },
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Asia/Kolkata"); },  // splits on IST minutes
      // Whole seconds at the finest: sub-second steps printed the same HH:MM:SS twice over a short run.
      axes: [Object.assign({}, axis, { values: xValues, space: 70, size: 44, incrs: X_INCRS }),
             Object.assign({}, axis, { values: yValues, size: ySize, space: 36, gap: 4 })],
      series: [{}, { label: data.symbol, stroke: "#0f172a", width: 1.5, spanGaps: false, points: { show: false } }],
      hooks: { draw: [function (u) { marks(u, data); }] },
    };
    if (plot) plot.destroy();
    plot = new uPlot(opts, [xs, ys], holder);
    holder.dataset.points = String(data.ticks.length);
    holder.dataset.markers = String(data.markers.length);
    holder.dataset.stopSteps = String((data.stop || []).length);
    holder.dataset.gaps = JSON.stringify(s.gaps);
    holder.dataset.nulls = String(ys.filter(function (v) { return v === null; }).length);
  }

  function load() {
    fetch(holder.dataset.src, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        if (data.now != null) clockSkew = data.now - Date.now() / 1000;
        draw(data);
      });
  }

  document.addEventListener("live-prices", function (e) {  // static/js/live.js: the line grows each second
    var p = shown && e.detail.prices[shown.symbol];
    if (p == null) return;
    var last = shown.ticks[shown.ticks.length - 1];
    if (last && e.detail.t <= last[0]) return;  // already drawn (or older than the last sample)
    shown.ticks.push([e.detail.t, p]);
    draw(shown);
  });

  document.body.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "strategy-panel") load();
  });
  window.addEventListener("resize", function () { if (plot) plot.setSize({ width: holder.clientWidth, height: HEIGHT }); });
  load();
})();
