/* On a result page opened by connect.js: tell the opener how the flow
 * ended, on the origin the server checked (data-origin), then close. */
(function () {
  "use strict";
  var outcome = document.getElementById("tv-outcome");
  if (!outcome || !window.opener) return;
  var data = outcome.dataset;
  window.opener.postMessage(
    {
      type: "tokenvault:connect",
      status: data.status,
      integration: data.integration,
      connection_id: data.connectionId || null,
      error: data.error || null
    },
    data.origin
  );
  window.close();
})();
