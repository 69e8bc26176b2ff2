// The new/edit strategy form: labels follow the direction and the stop-loss type, and the inputs that only
// matter for a choice (the target's value, the LIMIT pair) are disabled until it is made. Works on the form
// HTMX swaps back in after a refused save, too.
(function () {
  "use strict";

  function sync(form) {
    var direction = form.querySelector("#f-direction");
    var short = direction && direction.value === "short";
    form.querySelectorAll("[data-long][data-short]").forEach(function (el) {
      el.textContent = short ? el.dataset.short : el.dataset.long;
    });
    var stopType = form.querySelector("#f-stop_loss_type");
    var stopLabel = form.querySelector("#stop-loss-label");
    if (stopType && stopLabel && stopLabel.dataset[stopType.value]) {
      stopLabel.textContent = stopLabel.dataset[stopType.value];
    }
    var stopHint = form.querySelector(".stop-hint");
    if (stopType && stopHint && stopType.value !== "price") stopHint.textContent = stopHint.dataset.relative;
    var targetType = form.querySelector("#f-target_type");
    var target = form.querySelector("#f-target");
    if (targetType && target) target.disabled = !targetType.value;
    var orderType = form.querySelector("#f-order_type");
    var limit = orderType && orderType.value === "LIMIT";
    ["#f-limit_buffer_pct", "#f-limit_wait_seconds"].forEach(function (sel) {
      var input = form.querySelector(sel);
      if (input) input.disabled = !limit;
    });
  }

  function syncAll() {
    var form = document.getElementById("strategy-form");
    if (form) sync(form);
  }

  document.addEventListener("change", function (event) {
    var form = event.target.closest && event.target.closest("#strategy-form");
    if (form) sync(form);
  });
  document.addEventListener("htmx:load", syncAll);  // also the form swapped back in after a refused save
  syncAll();
})();
