// The Connect UI in Debian's chromium (playwright-core, no browser
// download) against a live `tokenvault serve` and the OIDC test peer; run
// by scripts/browser.sh, which starts both and sets the environment.
//
// Each page an end user can land on is shown, scanned with axe-core (no
// serious or critical violation), checked to load nothing from outside the
// service and to weigh under 50 KB (HTML + CSS + JS), and screenshotted.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const BASE = process.env.TOKENVAULT_URL;
const API_KEY = process.env.TOKENVAULT_API_KEY;
const PEER = process.env.PEER_ISSUER;
const APP_PORT = Number(process.env.APP_PORT);
const SHOTS = process.env.SCREENSHOTS;
for (const [name, value] of Object.entries({ BASE, API_KEY, PEER, APP_PORT, SHOTS })) {
  assert.ok(value, `${name} is not set: run scripts/browser.sh`);
}
const ALLOWED_APP = `http://localhost:${APP_PORT}`;
const FOREIGN_APP = `http://127.0.0.1:${APP_PORT}`;
const AXE = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

let browser;
let appServer;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--no-first-run",
      "--disable-sync",
    ],
  });
  // The application's page, for the popup helper: served on one port,
  // reached as localhost (an allowed origin) or 127.0.0.1 (foreign).
  appServer = createServer((request, response) => {
    response.setHeader("content-type", "text/html; charset=utf-8");
    response.end(`<!doctype html><html lang="en"><head><title>Fan Club</title>
<script src="${BASE}/connect.js"></script></head>
<body><main><button id="connect">Connect</button><output id="result"></output></main>
<script>
document.getElementById("connect").onclick = () => {
  tokenvault.connect(window.connectUrl).then(
    (result) => { document.getElementById("result").textContent = JSON.stringify(result); },
    (error) => { document.getElementById("result").textContent = "rejected: " + error.message; });
};
</script></body></html>`);
  });
  await new Promise((resolve) => appServer.listen(APP_PORT, resolve));
});

after(async () => {
  await browser?.close();
  await new Promise((resolve) => (appServer ? appServer.close(resolve) : resolve()));
});

async function api(method, path, body) {
  const response = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : null };
}

async function connectSession(body) {
  const created = await api("POST", "/v1/connect-sessions", body);
  assert.equal(created.status, 201, JSON.stringify(created.json));
  return created.json;
}

async function peerHook(path, body) {
  const response = await fetch(`${PEER}/__test/${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.ok(response.ok, `peer hook ${path}: ${response.status}`);
}

/** A fresh browser context (its own cookies) and page; `requests` records
 * every request the page makes, with the size of each answer. */
async function newPage() {
  // bypassCSP lets the test inject axe-core; the CSP itself is asserted by
  // the server's tests, and our pages need no inline script to work.
  const context = await browser.newContext({ bypassCSP: true, viewport: { width: 420, height: 860 } });
  const page = await context.newPage();
  const requests = [];
  page.on("requestfinished", (request) => {
    requests.push(
      (async () => {
        const response = await request.response();
        let size = 0;
        try {
          size = (await response.body()).length;
        } catch {
          // A redirect has no body to read.
        }
        return { url: request.url(), type: request.resourceType(), size };
      })(),
    );
  });
  return { context, page, requests };
}

/** The page the browser stopped on: resources, weight, axe, screenshot. */
async function inspect(page, pending, name) {
  assert.ok(page.url().startsWith(BASE), `${name}: ended on ${page.url()}`);
  await page.waitForLoadState("networkidle");
  const requests = await Promise.all(pending);
  const onPage = requests.filter((r) => r.type !== "document" || r.url === page.url());
  const ours = (url) => url.startsWith(BASE + "/") || url.startsWith("data:");
  const outside = requests
    .filter((r) => r.type !== "document")
    .filter((r) => !ours(r.url))
    .map((r) => r.url);
  assert.deepEqual(outside, [], `${name} loaded resources from outside the service`);
  const weight = onPage
    .filter((r) => ["document", "stylesheet", "script"].includes(r.type) && ours(r.url))
    .reduce((sum, r) => sum + r.size, 0);
  assert.ok(weight > 0 && weight < 50 * 1024, `${name} weighs ${weight} bytes`);

  await page.addScriptTag({ content: AXE });
  const violations = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const results = await axe.run(document, { resultTypes: ["violations"] });
    return results.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
  });
  assert.deepEqual(violations, [], `${name}: accessibility violations`);
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
  return weight;
}

async function heading(page) {
  return (await page.locator("h1").first().textContent()).trim();
}

async function outcomeOf(connectUrl) {
  const response = await fetch(connectUrl, { headers: { accept: "application/json" } });
  return response.json();
}

test("the connect page shows the app, the access asked for, and connects once; the result survives a reload", async () => {
  const session = await connectSession({ user_id: "fan-1", integration: "music", connect_ui: "page" });
  const { context, page, requests } = await newPage();
  const shown = await page.goto(session.connect_url);
  assert.equal(shown.status(), 200);
  assert.equal(await heading(page), "Connect your Music account");
  assert.match(await page.textContent("main"), /Fan Club will be able to:/);
  assert.equal(await page.getAttribute("span[title=email]", "title"), "email");
  await inspect(page, requests, "connect-page");

  requests.length = 0;
  await page.getByRole("link", { name: "Continue to Music" }).click();
  await page.waitForURL(`${BASE}/connect/${session.id}/result`);
  assert.equal(await heading(page), "Music connected");
  await inspect(page, requests, "result-connected");

  await page.reload();
  assert.equal(await heading(page), "Music connected");
  const outcome = await outcomeOf(session.connect_url);
  assert.equal(outcome.status, "connected");
  await context.close();
});

test("a picker connects the integration the user chooses", async () => {
  const session = await connectSession({ user_id: "fan-2", integrations: ["music", "video"] });
  const { context, page, requests } = await newPage();
  await page.goto(session.connect_url);
  assert.equal(await heading(page), "Choose an account to connect");
  await inspect(page, requests, "picker");
  // Keyboard only: tab to the second button and press Enter.
  const video = page.getByRole("link", { name: "Continue to Video" });
  await video.focus();
  await page.keyboard.press("Enter");
  await page.waitForURL(`${BASE}/connect/${session.id}/result`);
  assert.equal(await heading(page), "Video connected");
  assert.equal((await api("GET", "/v1/users/fan-2/connections/video")).status, 200);
  assert.equal((await api("GET", "/v1/users/fan-2/connections/music")).status, 404);
  await context.close();
});

test("a direct link goes straight to the provider and ends on the result page", async () => {
  const session = await connectSession({ user_id: "fan-3", integration: "video" });
  const { context, page } = await newPage();
  await page.goto(session.connect_url);
  await page.waitForURL(`${BASE}/connect/${session.id}/result`);
  assert.equal(await heading(page), "Video connected");
  await context.close();
});

test("denied consent, an expired link and a used link each say what happened", async () => {
  await peerHook("config", { interaction: "deny" });
  try {
    const session = await connectSession({ user_id: "fan-4", integration: "music" });
    const { context, page, requests } = await newPage();
    await page.goto(session.connect_url);
    assert.equal(await heading(page), "Connection cancelled");
    await inspect(page, requests, "result-denied");
    await context.close();
  } finally {
    await peerHook("config", { interaction: "approve" });
  }

  const { context, page, requests } = await newPage();
  await page.goto(`${BASE}/connect/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA`);
  assert.equal(await heading(page), "This link has expired");
  await inspect(page, requests, "result-expired");

  // Opened elsewhere first (as if the user left at the provider).
  const session = await connectSession({ user_id: "fan-5", integration: "music" });
  const opened = await fetch(session.connect_url, { redirect: "manual" });
  assert.equal(opened.status, 302);
  requests.length = 0;
  await page.goto(session.connect_url);
  assert.equal(await heading(page), "This link was already used");
  await inspect(page, requests, "result-used");
  await context.close();
});

test("a reconnect renews the same connection", async () => {
  const first = await connectSession({ user_id: "fan-6", integration: "music" });
  const { context, page, requests } = await newPage();
  await page.goto(first.connect_url);
  await page.waitForURL(`${BASE}/connect/${first.id}/result`);
  const firstId = (await outcomeOf(first.connect_url)).connection_id;

  const again = await connectSession({ user_id: "fan-6", integration: "music", reconnect: true });
  requests.length = 0;
  await page.goto(again.connect_url);
  assert.equal(await heading(page), "Reconnect your Music account");
  await inspect(page, requests, "reconnect-page");
  await page.getByRole("link", { name: "Continue to Music" }).click();
  await page.waitForURL(`${BASE}/connect/${again.id}/result`);
  assert.equal(await heading(page), "Music reconnected");
  assert.equal((await outcomeOf(again.connect_url)).connection_id, firstId);
  await context.close();
});

test("the popup helper resolves on an allowed origin and hears nothing on a foreign one", async () => {
  const session = await connectSession({ user_id: "fan-7", integration: "music", connect_ui: "page" });
  const { context, page } = await newPage();
  await page.goto(`${ALLOWED_APP}/`);
  await page.evaluate((url) => {
    window.connectUrl = url;
  }, session.connect_url);
  const [popup] = await Promise.all([page.waitForEvent("popup"), page.click("#connect")]);
  await popup.waitForLoadState();
  assert.equal(await heading(popup), "Connect your Music account");
  await popup.getByRole("link", { name: "Continue to Music" }).click();
  await page.waitForFunction(() => document.getElementById("result").textContent !== "");
  const result = JSON.parse(await page.textContent("#result"));
  assert.equal(result.status, "connected");
  assert.equal(result.integration, "music");
  assert.equal(result.connection_id, (await outcomeOf(session.connect_url)).connection_id);
  await context.close();

  // From a page on a foreign origin: the link refuses to open, no message
  // is posted, the promise rejects when the user closes the popup, and the
  // link is still unused.
  const other = await connectSession({ user_id: "fan-8", integration: "music", connect_ui: "page" });
  const foreign = await newPage();
  await foreign.page.goto(`${FOREIGN_APP}/`);
  await foreign.page.evaluate((url) => {
    window.connectUrl = url;
  }, other.connect_url);
  const [refused] = await Promise.all([
    foreign.page.waitForEvent("popup"),
    foreign.page.click("#connect"),
  ]);
  await refused.waitForLoadState();
  assert.equal(await heading(refused), "Connection not completed");
  assert.equal(await refused.locator("#tv-outcome").count(), 0);
  await refused.close();
  await foreign.page.waitForFunction(() => document.getElementById("result").textContent !== "");
  assert.match(await foreign.page.textContent("#result"), /^rejected: the connect window was closed/);
  const untouched = await fetch(other.connect_url, { headers: { accept: "text/html" } });
  assert.equal(untouched.status, 200);
  assert.match(await untouched.text(), /Connect your Music account/);
  await foreign.context.close();
});

/** Connects `user` to music through a direct link in a fresh context. */
async function connectUser(user) {
  const session = await connectSession({ user_id: user, integration: "music" });
  const { context, page } = await newPage();
  await page.goto(session.connect_url);
  await page.waitForURL(`${BASE}/connect/${session.id}/result`);
  await context.close();
}

test("the device page shows the code and a QR code, and turns to connected when the user approves", async () => {
  await peerHook("config", { device_interval: 1 });
  const started = await api("POST", "/v1/device-sessions", { user_id: "tv-1", integration: "music" });
  assert.equal(started.status, 201, JSON.stringify(started.json));
  const { context, page, requests } = await newPage();
  await page.goto(started.json.page_url);
  assert.equal(await heading(page), "Connect your Music account");
  assert.equal((await page.textContent(".user-code")).trim(), started.json.user_code);
  assert.ok(await page.locator("svg.qr").isVisible(), "a QR code");
  assert.equal(await page.getAttribute("#device-status", "data-status"), "pending");
  await inspect(page, requests, "device-page");

  await peerHook("device/approve", { user_code: started.json.user_code });
  await page.waitForSelector('#device-status[data-status="connected"]', { timeout: 15000 });
  assert.match(await page.textContent("#device-status"), /now connected/);
  await page.screenshot({ path: `${SHOTS}/device-connected.png`, fullPage: true });
  assert.equal((await api("GET", "/v1/users/tv-1/connections/music")).json.status, "connected");
  await context.close();
});

test("an operator signs in, finds the users who need re-auth, revokes one, reconnects another, cancels a bulk action and signs out", async () => {
  for (const user of ["op-1", "op-2", "op-3"]) await connectUser(user);
  // The peer forgets every grant; refreshes find out for op-1 and op-2.
  await peerHook("revoke-grants", {});
  for (const user of ["op-1", "op-2"]) {
    const forced = await api("POST", `/v1/users/${user}/connections/music/refresh`, {});
    assert.equal(forced.status, 409, JSON.stringify(forced.json));
  }

  const { context, page, requests } = await newPage();
  await page.setViewportSize({ width: 1200, height: 900 });
  await page.goto(`${BASE}/admin`);
  await page.waitForURL(`${BASE}/admin/login`);
  await inspect(page, requests, "admin-login");

  // A wrong key is refused with a message; the right one signs in.
  await page.fill("#api_key", "tvk_wrong_key");
  await page.click("button[type=submit]");
  assert.match(await page.textContent("[role=alert]"), /not a valid API key/);
  await page.fill("#api_key", API_KEY);
  requests.length = 0;
  await page.click("button[type=submit]");
  await page.waitForURL(`${BASE}/admin`);

  // The overview's numbers are the API's.
  const summary = (await api("GET", "/v1/connections/summary")).json;
  assert.equal((await page.textContent("#total")).trim(), String(summary.total));
  assert.equal((await page.textContent("#due")).trim(), String(summary.due_within_1h));
  assert.equal((await page.textContent("#failing")).trim(), String(summary.failing));
  const music = summary.integrations.find((row) => row.integration === "music");
  assert.equal(
    (await page.textContent('tr[data-integration="music"] td[data-status="needs_reauth"]')).trim(),
    String(music.by_status.needs_reauth),
  );
  await inspect(page, requests, "admin-overview");

  // A state-changing request without the form's CSRF token is refused.
  const forged = await page.evaluate(async () => {
    const response = await fetch("/admin/logout", { method: "POST" });
    return { status: response.status, code: response.headers.get("tokenvault-error") };
  });
  assert.deepEqual(forged, { status: 403, code: "csrf_failed" });

  // Who needs re-auth.
  await page.click("nav >> text=Connections");
  await page.selectOption("#status", "needs_reauth");
  await page.selectOption("#integration", "music");
  requests.length = 0;
  await page.click("form[role=search] button");
  await page.waitForURL(/status=needs_reauth/);
  const listed = await page.locator("#connections tbody td:first-child").allTextContents();
  assert.deepEqual(listed.map((s) => s.trim()).sort(), ["op-1", "op-2"]);
  await inspect(page, requests, "admin-connections");

  // Revoke op-1, after the confirmation.
  requests.length = 0;
  await page.click("text=op-1");
  await page.waitForSelector("#history");
  await inspect(page, requests, "admin-connection");
  requests.length = 0;
  await page.click("text=Revoke…");
  await page.waitForSelector("form button.danger");
  await inspect(page, requests, "admin-confirm-revoke");
  await page.click("form button.danger");
  await page.waitForURL(/done=revoked/);
  assert.equal((await page.textContent("#status")).trim(), "disconnected");
  assert.equal((await api("GET", "/v1/users/op-1/connections/music")).json.status, "disconnected");

  // A reconnect link for op-2, completed by the user: same connection.
  const before = (await api("GET", "/v1/connections?user_id_prefix=op-2")).json.connections[0];
  await page.goto(`${BASE}/admin/connections/${before.id}`);
  await page.click("text=Create a reconnect link");
  const link = await page.inputValue("#reconnect-link");
  assert.ok(link.startsWith(`${BASE}/connect/`), link);
  const user = await newPage();
  await user.page.goto(link);
  assert.equal(await heading(user.page), "Reconnect your Music account");
  await user.page.getByRole("link", { name: "Continue to Music" }).click();
  await user.page.waitForURL(/\/result$/);
  assert.equal(await heading(user.page), "Music reconnected");
  await user.context.close();
  const after = (await api("GET", "/v1/connections?user_id_prefix=op-2")).json.connections[0];
  assert.equal(after.id, before.id);
  assert.equal(after.status, "connected");

  // Cancel a scheduled bulk action.
  const later = new Date(Date.now() + 3600_000).toISOString();
  const bulk = await api("POST", "/v1/bulk-actions", {
    integration: "music",
    users: ["op-2", "op-3"],
    request: { method: "GET", path: "me" },
    not_before: later,
  });
  assert.equal(bulk.status, 202, JSON.stringify(bulk.json));
  await page.click("nav >> text=Bulk actions");
  requests.length = 0;
  await page.click(`a[href="/admin/bulk/${bulk.json.id}"]`);
  await page.waitForSelector("progress");
  await inspect(page, requests, "admin-bulk");
  await page.click("text=Cancel the action");
  await page.waitForURL(/done=cancelled/);
  assert.equal((await api("GET", `/v1/bulk-actions/${bulk.json.id}`)).json.state, "cancelled");

  // Keys: a new key is shown once.
  await page.click("nav >> text=Keys");
  await page.fill("#key-name", "reporting");
  await page.selectOption("#key-scope", "read-tokens");
  await page.click("text=Create key");
  const key = await page.inputValue("#new-key");
  assert.match(key, /^tvk_/);
  requests.length = 0;
  await page.goto(`${BASE}/admin/keys`);
  assert.equal(await page.locator("#new-key").count(), 0, "shown only once");
  await inspect(page, requests, "admin-keys");

  // Sign out: the console is closed again.
  await page.click("text=Sign out");
  await page.waitForURL(/\/admin\/login\?why=signed_out/);
  await page.goto(`${BASE}/admin`);
  await page.waitForURL(`${BASE}/admin/login`);
  await context.close();
});
