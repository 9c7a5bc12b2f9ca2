// The TypeScript SDK against a live tokenvault and the OIDC test peer, run
// by scripts/sdks.sh (which starts both and sets the environment below). Not
// part of `npm test`: without the environment it fails, never skips.
//
// One connection's whole life: a connect session, the browser flow driven
// over HTTP, a token, a forced refresh, the proxy (GET and POST), the
// listing, the history, a delivered webhook verified, a bulk action followed
// to the end, revocation; then needs_reauth after the peer revokes a grant,
// as a typed error.
import { test } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  NeedsReauthError,
  NotConnectedError,
  Tokenvault,
  WebhookSignatureError,
  verifyWebhook,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/sdks.sh`);
  return value;
}

const BASE = env("TOKENVAULT_URL");
const API_KEY = env("TOKENVAULT_API_KEY");
const PEER = env("PEER_ISSUER");
const WEBHOOK_SECRET = env("WEBHOOK_SECRET");
const WEBHOOK_DIR = env("WEBHOOK_DIR");
const INTEGRATION = "peer";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function peerHook(name: string, body: unknown): Promise<void> {
  const response = await fetch(`${PEER}/__test/${name}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, `peer hook ${name}`);
  await response.body?.cancel();
}

/**
 * What a browser does with a connect URL: follows every redirect
 * (tokenvault → the peer's login and consent → tokenvault's callback),
 * keeping cookies (by name: everything runs on 127.0.0.1, and cookies do
 * not depend on the port).
 */
async function browse(connectUrl: string): Promise<Response> {
  const cookies = new Map<string, string>();
  let url = connectUrl;
  for (let hop = 0; hop < 20; hop++) {
    const response = await fetch(url, {
      redirect: "manual",
      headers: {
        accept: "text/html",
        cookie: [...cookies].map(([name, value]) => `${name}=${value}`).join("; "),
      },
    });
    for (const line of response.headers.getSetCookie()) {
      const [pair = ""] = line.split(";");
      const at = pair.indexOf("=");
      cookies.set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
    }
    const location = response.headers.get("location");
    if (response.status < 300 || response.status >= 400 || !location) return response;
    await response.body?.cancel();
    url = new URL(location, url).toString();
  }
  throw new Error("too many redirects");
}

interface Delivery {
  headers: Record<string, string>;
  body: string;
}

/** The first delivered webhook of this kind for this user. */
async function webhookFor(kind: string, userId: string): Promise<Delivery> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    for (const name of readdirSync(WEBHOOK_DIR).filter((n) => n.endsWith(".json")).sort()) {
      const delivery = JSON.parse(readFileSync(join(WEBHOOK_DIR, name), "utf8")) as Delivery;
      const event = JSON.parse(delivery.body) as { type?: string; data?: { user_id?: string } };
      if (event.type === kind && event.data?.user_id === userId) return delivery;
    }
    await sleep(100);
  }
  throw new Error(`no ${kind} webhook for ${userId} within 30 s`);
}

test("a connection from connect to revoke", async () => {
  const user = "ts-fan";
  await peerHook("config", { account: user });
  const tv = new Tokenvault({ baseUrl: BASE, apiKey: API_KEY });

  const session = await tv.createConnectSession(user, INTEGRATION);
  assert.ok(session.connect_url.startsWith(BASE));
  const page = await browse(session.connect_url);
  assert.equal(page.status, 200, await page.text());

  const token = await tv.getToken(user, INTEGRATION, { minTtl: 60 });
  assert.ok(token.accessToken.length > 0);
  assert.ok(!inspect(token).includes(token.accessToken));
  assert.ok(!JSON.stringify({ token }).includes(token.accessToken));
  assert.ok(token.scopes.includes("openid"));

  const refreshed = await tv.refreshConnection(user, INTEGRATION);
  assert.equal(refreshed.status, "connected");
  assert.notEqual((await tv.getToken(user, INTEGRATION)).accessToken, token.accessToken);

  const me = await tv.proxy(user, INTEGRATION, { path: "me" });
  assert.equal(me.status, 200);
  assert.equal((await me.json<{ sub: string }>()).sub, user);
  // userinfo by POST (OpenID Connect Core 5.3.1): a form body.
  const posted = await tv.proxy(user, INTEGRATION, {
    method: "POST",
    path: "/me",
    body: "from=tokenvault-sdk",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
  });
  const postedText = await posted.text();
  assert.equal(posted.status, 200, postedText);
  assert.equal((JSON.parse(postedText) as { sub: string }).sub, user);
  // The provider's own refusal is relayed, not thrown.
  const missing = await tv.proxy(user, INTEGRATION, { path: "no-such-endpoint" });
  assert.equal(missing.status, 404);
  await missing.body?.cancel();

  const listed = [];
  for await (const connection of tv.listConnections({ integration: INTEGRATION, userIdPrefix: "ts-", pageSize: 1 })) {
    listed.push([connection.user_id, connection.status]);
  }
  assert.deepEqual(listed, [[user, "connected"]]);
  const kinds = [];
  for await (const event of tv.connectionEvents(user, INTEGRATION, { pageSize: 1 })) kinds.push(event.kind);
  assert.deepEqual(kinds, ["refresh_forced", "created"]);

  const delivery = await webhookFor("connection.created", user);
  const signature = delivery.headers["tokenvault-signature"];
  await verifyWebhook(delivery.body, signature, WEBHOOK_SECRET);
  await assert.rejects(
    verifyWebhook(delivery.body.replace(user, "someone-else"), signature, WEBHOOK_SECRET),
    (err: unknown) => err instanceof WebhookSignatureError && err.reason === "mismatch",
  );
  await assert.rejects(
    verifyWebhook(delivery.body, signature, WEBHOOK_SECRET, { now: Math.floor(Date.now() / 1000) + 3600 }),
    (err: unknown) => err instanceof WebhookSignatureError && err.reason === "stale",
  );

  const action = await tv.createBulkAction({
    integration: INTEGRATION,
    users: [user, "ts-nobody"],
    request: { method: "GET", path: "me" },
  });
  const states = [];
  let last = action;
  for await (const progress of tv.bulkActionProgress(action.id, { intervalMs: 200 })) {
    states.push(progress.state);
    last = progress;
  }
  assert.equal(states.at(-1), "completed");
  assert.equal(last.counts["succeeded"], 1);
  assert.equal(last.counts["skipped"], 1);
  const skipped = [];
  for await (const item of tv.bulkActionItems(action.id, { state: "skipped" })) skipped.push(item.user_id);
  assert.deepEqual(skipped, ["ts-nobody"]);

  const revocation = await tv.revokeConnection(user, INTEGRATION);
  assert.equal(revocation.revoked_at_provider, true);
  await assert.rejects(tv.getToken(user, INTEGRATION), (err: unknown) => {
    assert.ok(err instanceof NotConnectedError);
    assert.ok(err.requestId);
    return true;
  });
});

test("needs_reauth after the provider revokes the grant", async () => {
  const user = "ts-revoked";
  await peerHook("config", { account: user });
  const tv = new Tokenvault({ baseUrl: BASE, apiKey: API_KEY });
  const page = await browse((await tv.createConnectSession(user, INTEGRATION)).connect_url);
  assert.equal(page.status, 200);
  await peerHook("revoke-grants", { account: user });
  await assert.rejects(tv.refreshConnection(user, INTEGRATION), (err: unknown) => {
    assert.ok(err instanceof NeedsReauthError, String(err));
    assert.equal(err.code, "needs_reauth");
    return true;
  });
  await assert.rejects(tv.getToken(user, INTEGRATION), NeedsReauthError);
  assert.equal((await tv.getConnection(user, INTEGRATION)).status, "needs_reauth");
});
