/* tokenvault's popup helper, served at /connect.js.
 *
 *   <script src="https://vault.example.com/connect.js"></script>
 *   const result = await tokenvault.connect(connectUrl);
 *   // {status: "connected" | "denied" | "failed" | "confirmation_required",
 *   //  integration, connection_id, error?}
 *
 * Opens the connect link in a popup; tokenvault's result page posts the
 * outcome back, to this page's origin only, and only when that origin is in
 * the service's allowed_redirect_origins. Messages from anywhere but the
 * popup on the service's origin are ignored. When the browser blocks the
 * popup, the page itself goes to the link (the session's redirect_to brings
 * the user back) and the promise never settles. It rejects when the user
 * closes the popup before the flow ends. */
(function (global) {
  "use strict";

  function connect(connectUrl, options) {
    options = options || {};
    var url = new URL(connectUrl, global.location.href);
    var serviceOrigin = url.origin;
    url.searchParams.set("popup", global.location.origin);
    var width = options.width || 500;
    var height = options.height || 700;
    var left = Math.round(global.screenX + Math.max(0, (global.outerWidth - width) / 2));
    var top = Math.round(global.screenY + Math.max(0, (global.outerHeight - height) / 3));
    var popup = global.open(
      url.toString(),
      "tokenvault-connect",
      "popup,width=" + width + ",height=" + height + ",left=" + left + ",top=" + top
    );
    if (!popup) {
      global.location.assign(connectUrl);
      return new Promise(function () {});
    }
    return new Promise(function (resolve, reject) {
      var timer;
      function stop() {
        global.removeEventListener("message", onMessage);
        global.clearInterval(timer);
      }
      function onMessage(event) {
        var data = event.data;
        if (event.origin !== serviceOrigin || event.source !== popup) return;
        if (!data || data.type !== "tokenvault:connect") return;
        stop();
        var result = {
          status: data.status,
          integration: data.integration,
          connection_id: data.connection_id || null
        };
        if (data.error) result.error = data.error;
        resolve(result);
      }
      global.addEventListener("message", onMessage);
      timer = global.setInterval(function () {
        if (!popup.closed) return;
        stop();
        var error = new Error("the connect window was closed before the connection finished");
        error.status = "closed";
        reject(error);
      }, 400);
    });
  }

  global.tokenvault = global.tokenvault || {};
  global.tokenvault.connect = connect;
})(window);
