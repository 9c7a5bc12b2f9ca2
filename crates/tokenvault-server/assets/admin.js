/* The admin console's only script: copy buttons, and the live counts of a
 * running bulk action (polled every 2 s until it ends). */
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var field = document.getElementById(button.dataset.copy);
    if (!field) return;
    field.select();
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });

  var live = document.querySelector("[data-live-url]");
  if (!live) return;
  var url = live.dataset.liveUrl;
  function set(name, value) {
    document.querySelectorAll('[data-live="' + name + '"]').forEach(function (el) {
      if (el.tagName === "PROGRESS") { el.value = value; el.textContent = value + " %"; }
      else { el.textContent = value; }
    });
  }
  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) { if (!response.ok) throw new Error(response.status); return response.json(); })
      .then(function (view) {
        Object.keys(view.counts).forEach(function (state) {
          var el = document.querySelector('[data-count="' + state + '"]');
          if (el) el.textContent = view.counts[state];
        });
        set("percent", view.percent);
        set("current_rate", view.current_rate);
        set("eta", view.eta);
        set("state", view.state);
        if (view.state === "running" || view.state === "scheduled") setTimeout(poll, 2000);
      })
      .catch(function () { setTimeout(poll, 10000); });
  }
  setTimeout(poll, 2000);
})();
