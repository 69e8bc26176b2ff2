// Sortable tables: click a column header of a table[data-sortable] to sort its rows by that column, click
// again to reverse. The choice is kept for the session and applied again after every HTMX live refresh
// swaps the table in anew. Cells may carry data-value (what to sort by); else their text is used, read as a
// number for data-sort="num" columns (−₹1,234.50 → -1234.5; "—" sorts last).
(function () {
  "use strict";
  var KEY = "sort:";

  function cellValue(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) return numeric ? null : "";
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent;
    if (!numeric) return raw.trim().toLowerCase();
    var cleaned = raw.replace(/\u2212/g, "-").replace(/\([^)]*\)/g, "").replace(/[^0-9.\-]/g, "");
    var n = parseFloat(cleaned);
    return isNaN(n) ? null : n;
  }

  function sortTable(table, index, descending) {
    var th = table.tHead.rows[0].cells[index];
    if (!th || !th.hasAttribute("data-sort")) return;
    var numeric = th.getAttribute("data-sort") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row._order = i; });
    rows.sort(function (a, b) {
      var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
      if (x === y) return a._order - b._order;
      if (x === null || x === "") return 1;  // empty last, either way
      if (y === null || y === "") return -1;
      var c = x < y ? -1 : 1;
      return descending ? -c : c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell, i) {
      if (i === index) cell.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else cell.removeAttribute("aria-sort");
    });
  }

  function prepare(root) {
    (root || document).querySelectorAll("table[data-sortable]").forEach(function (table) {
      if (!table.tHead) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
        if (th.hasAttribute("data-sort")) { th.tabIndex = 0; th.classList.add("sortable"); }
      });
      var saved = null;
      try { saved = JSON.parse(sessionStorage.getItem(KEY + table.id) || "null"); } catch (e) { saved = null; }
      if (saved) sortTable(table, saved.index, saved.descending);
    });
  }

  function onPick(event) {
    if (event.type === "keydown" && event.key !== "Enter" && event.key !== " ") return;
    var th = event.target.closest && event.target.closest("table[data-sortable] thead th[data-sort]");
    if (!th) return;
    event.preventDefault();
    var table = th.closest("table");
    var descending = th.getAttribute("aria-sort") === "ascending";
    sortTable(table, th.cellIndex, descending);
    try { sessionStorage.setItem(KEY + table.id, JSON.stringify({index: th.cellIndex, descending: descending})); } catch (e) { /* private mode */ }
  }

  document.addEventListener("click", onPick);
  document.addEventListener("keydown", onPick);
  document.addEventListener("htmx:load", function () { prepare(document); });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { prepare(); });
  else prepare();
})();
