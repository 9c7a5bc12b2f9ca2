/* The device page: asks /device/{id}/status every few seconds and shows
 * the outcome as soon as it is known. No other work, no dependencies. */
(function () {
  "use strict";
  var box = document.getElementById("device-status");
  if (!box || box.dataset.status !== "pending") return;
  var url = box.dataset.statusUrl;
  var delay = 2000;
  function show(status, message) {
    box.className = "device-status " + status;
    box.dataset.status = status;
    var line = box.querySelector("p");
    line.textContent = message;
  }
  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (response) { return response.json(); })
      .then(function (body) {
        if (!body || !body.status) throw new Error("no status");
        show(body.status, body.message);
        delay = 2000;
        if (body.status === "pending") setTimeout(poll, delay);
      })
      .catch(function () {
        // A network blip: back off to 15 s, keep trying.
        delay = Math.min(delay * 2, 15000);
        setTimeout(poll, delay);
      });
  }
  setTimeout(poll, delay);
})();
