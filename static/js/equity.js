// The strategy page's equity curve (uPlot): cumulative realised P&L after each run that closed a position,
// one point per run labelled by its date, from zero. The points are in #equity-chart's data-points; the
// run history section is re-fetched on a push or the 5 s poll, and the curve redrawn from the new points.
(function () {
  "use strict";
  if (typeof uPlot === "undefined") return;
  var plot = null;
  var rupees = new Intl.NumberFormat("en-IN", { maximumFractionDigits: 0 });
  var paise = new Intl.NumberFormat("en-IN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

  function money(value, exact) {
    var text = "₹" + (exact ? paise : rupees).format(Math.abs(value));
    return value < 0 ? "\u2212" + text : text;
  }

  function shortDate(iso) {  // "2026-11-25" → "25 Nov"
    var parts = iso.split("-");
    var months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    return Number(parts[2]) + " " + months[Number(parts[1]) - 1];
  }

  function zeroLine(u) {
    var ctx = u.ctx, y = u.valToPos(0, "y", true);
    ctx.save();
    ctx.strokeStyle = "#94a3b8"; ctx.setLineDash([4, 4]); ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(u.bbox.left, y); ctx.lineTo(u.bbox.left + u.bbox.width, y); ctx.stroke();
    ctx.restore();
  }

  function draw() {
    var holder = document.getElementById("equity-chart");
    if (plot) { plot.destroy(); plot = null; }
    if (!holder) return;
    var points = JSON.parse(holder.dataset.points || "[]");
    if (!points.length) return;
    var xs = [0], ys = [0], labels = ["start"];
    points.forEach(function (p, i) {
      xs.push(i + 1); ys.push(Number(p.cumulative_pnl)); labels.push(shortDate(p.run_date));
    });
    var lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
    var pad = Math.max(1, (hi - lo) * 0.12);
    var last = ys[ys.length - 1];
    var colour = last < 0 ? "#b42318" : "#11622c";
    var opts = {
      width: holder.clientWidth, height: 220, legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false, range: [0, Math.max(1, xs.length - 1)] }, y: { range: [lo - pad, hi + pad] } },
      axes: [
        { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500],
          values: function (u, splits) { return splits.map(function (v) { return labels[v] || ""; }); } },
        { size: 72, values: function (u, splits) { return splits.map(function (v) { return money(v, false); }); } },
      ],
      series: [{}, { label: "Cumulative P&L", stroke: colour, width: 2, fill: last < 0 ? "rgba(180,35,24,.08)" : "rgba(17,98,44,.08)",
                     points: { show: true, size: 6, fill: colour } }],
      hooks: { drawAxes: [zeroLine] },
    };
    plot = new uPlot(opts, [xs, ys], holder);
    holder.dataset.drawn = String(points.length);
    holder.title = "Cumulative realised P&L: " + money(last, true);
  }

  document.body.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "run-history") draw();
  });
  window.addEventListener("resize", function () {
    var holder = document.getElementById("equity-chart");
    if (plot && holder) plot.setSize({ width: holder.clientWidth, height: 220 });
  });
  draw();
})();
