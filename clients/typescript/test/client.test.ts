import { test } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import {
  AccessToken,
  NeedsReauthError,
  NotConnectedError,
  ProviderUnavailableError,
  Tokenvault,
  TransportError,
  ValidationError,
} from "../src/index.js";
import type { operations } from "../src/generated/api.js";

/** A fetch that answers from a list and records what it was asked. */
function scripted(answers: Array<() => Response>) {
  const calls: Request[] = [];
  const fetch = async (input: string | URL | Request, init?: RequestInit) => {
    calls.push(new Request(input, init));
    const next = answers.shift();
    if (!next) throw new Error("no more answers");
    return next();
  };
  return { calls, fetch: fetch as typeof globalThis.fetch };
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}) => () =>
  new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });

const envelope = (error: string) => ({ error, message: `${error} happened`, request_id: "req-1" });

/** tokenvault's own error answer: the envelope and the header that marks it. */
const refusal = (status: number, code: string, headers: Record<string, string> = {}) =>
  json(status, envelope(code), { "tokenvault-error": code, ...headers });

test("getToken returns a token whose secret never prints", async () => {
  const { calls, fetch } = scripted([
    json(200, {
      access_token: "AT-secret-value",
      token_type: "Bearer",
      expires_at: "2030-01-01T00:00:00Z",
      scopes: ["read"],
    }),
  ]);
  const tv = new Tokenvault({ baseUrl: "http://tv.test/", apiKey: "tvk_key", fetch });
  const token = await tv.getToken("fan 1", "spotify", { minTtl: 120 });
  assert.ok(token instanceof AccessToken);
  assert.equal(token.accessToken, "AT-secret-value");
  assert.equal(token.authorization(), "Bearer AT-secret-value");
  assert.equal(token.expiresAt?.toISOString(), "2030-01-01T00:00:00.000Z");
  for (const printed of [String(token), `${token}`, JSON.stringify(token), inspect(token), inspect({ token })]) {
    assert.ok(!printed.includes("AT-secret-value"), printed);
  }
  assert.ok(!inspect(tv).includes("tvk_key"), "the API key never prints either");
  const call = calls[0];
  assert.ok(call);
  assert.equal(call.url, "http://tv.test/v1/users/fan%201/connections/spotify/token?min_ttl=120");
  assert.equal(call.headers.get("authorization"), "Bearer tvk_key");
  assert.match(call.headers.get("user-agent") ?? "", /^tokenvault-js\/\d+\.\d+\.\d+/);
});

test("errors are classes by code, with the request id", async () => {
  const cases: Array<[number, string, new (...args: never[]) => Error]> = [
    [409, "needs_reauth", NeedsReauthError],
    [404, "connection_not_found", NotConnectedError],
    [400, "invalid_user_id", ValidationError],
  ];
  for (const [status, code, Class] of cases) {
    const { fetch } = scripted([refusal(status, code)]);
    const tv = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch });
    await assert.rejects(tv.getToken("u", "spotify"), (err: unknown) => {
      assert.ok(err instanceof Class, `${code}: ${String(err)}`);
      assert.equal((err as NeedsReauthError).code, code);
      assert.equal((err as NeedsReauthError).requestId, "req-1");
      assert.equal((err as NeedsReauthError).status, status);
      return true;
    });
  }
});

test("a 503 with a short Retry-After is retried; a long one is thrown", async () => {
  const unavailable = (after: string) =>
    refusal(503, "provider_unavailable", { "retry-after": after });
  const ok = json(200, { access_token: "AT", token_type: "Bearer", expires_at: null, scopes: [] });
  const retried = scripted([unavailable("0"), ok]);
  const tv = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch: retried.fetch });
  assert.equal((await tv.getToken("u", "i")).accessToken, "AT");
  assert.equal(retried.calls.length, 2);

  const long = scripted([unavailable("60")]);
  const patient = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch: long.fetch });
  await assert.rejects(patient.getToken("u", "i"), (err: unknown) => {
    assert.ok(err instanceof ProviderUnavailableError);
    assert.equal(err.retryAfter, 60);
    return true;
  });
  assert.equal(long.calls.length, 1);

  const off = scripted([unavailable("0")]);
  const noRetry = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch: off.fetch, maxRetries: 0 });
  await assert.rejects(noRetry.getToken("u", "i"), ProviderUnavailableError);
  assert.equal(off.calls.length, 1);
});

test("a request without an answer in time is a TransportError", async () => {
  const hang: typeof fetch = (_input, init) =>
    new Promise((_, reject) => {
      init?.signal?.addEventListener("abort", () => reject(init.signal?.reason));
    });
  const tv = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch: hang, timeoutMs: 50 });
  await assert.rejects(tv.getToken("u", "i"), (err: unknown) => {
    assert.ok(err instanceof TransportError);
    assert.equal(err.code, "timeout");
    return true;
  });
});

test("listings are async iterators over every page", async () => {
  const row = (user: string) => ({ id: "x", user_id: user, integration: "spotify", status: "needs_reauth" });
  const { calls, fetch } = scripted([
    json(200, { connections: [row("a"), row("b")], next_cursor: "CUR" }),
    json(200, { connections: [row("c")], next_cursor: null }),
  ]);
  const tv = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch });
  const users: string[] = [];
  for await (const connection of tv.listConnections({ status: "needs_reauth", pageSize: 2 })) {
    users.push(connection.user_id);
  }
  assert.deepEqual(users, ["a", "b", "c"]);
  assert.equal(new URL(calls[1]?.url ?? "").searchParams.get("after"), "CUR");
  assert.equal(new URL(calls[0]?.url ?? "").searchParams.get("status"), "needs_reauth");
});

test("the proxy relays the provider's answers and throws only tokenvault's own", async () => {
  const { calls, fetch } = scripted([
    json(404, { error: { status: 404, message: "Not found" } }),
    // A provider answering in the very shape of our envelope, and a 503
    // of its own with a short Retry-After: relayed, never retried.
    json(404, envelope("connection_not_found")),
    json(503, envelope("provider_unavailable"), { "retry-after": "0" }),
    refusal(409, "needs_reauth"),
  ]);
  const tv = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch });
  const relayed = await tv.proxy("u", "spotify", {
    method: "POST",
    path: "/me/tracks",
    query: { ids: "1,2" },
    body: { ids: ["1"] },
  });
  assert.equal(relayed.status, 404);
  assert.deepEqual(await relayed.json(), { error: { status: 404, message: "Not found" } });
  assert.equal(calls[0]?.url, "http://tv.test/v1/proxy/spotify/u/me/tracks?ids=1%2C2");
  assert.equal(await calls[0]?.text(), '{"ids":["1"]}');
  assert.equal((await tv.proxy("u", "spotify", { path: "me" })).status, 404);
  assert.equal((await tv.proxy("u", "spotify", { path: "me" })).status, 503);
  assert.equal(calls.length, 3, "the provider's 503 was not retried");
  await assert.rejects(tv.proxy("u", "spotify", { path: "me" }), NeedsReauthError);
});

// Every operation of the generated document has a method: a new operation
// in src/generated/api.ts fails to compile here until it is mapped.
const METHOD_FOR: Record<keyof operations, keyof Tokenvault> = {
  cancelBulkAction: "cancelBulkAction",
  confirmConnectSession: "confirmConnectSession",
  createBulkAction: "createBulkAction",
  createConnectSession: "createConnectSession",
  createDeviceSession: "createDeviceSession",
  getAppToken: "getAppToken",
  getBulkAction: "getBulkAction",
  getConnection: "getConnection",
  getConnectionSummary: "connectionSummary",
  getDeviceSession: "getDeviceSession",
  getProfile: "getProfile",
  getProvider: "getProvider",
  getToken: "getToken",
  importConnection: "importConnection",
  listBulkActionItems: "bulkActionItems",
  listConnectionEvents: "connectionEvents",
  listConnections: "listConnections",
  listIntegrations: "listIntegrations",
  listProviders: "listProviders",
  listUserConnections: "listUserConnections",
  ping: "ping",
  proxyDelete: "proxy",
  proxyGet: "proxy",
  proxyHead: "proxy",
  proxyOptions: "proxy",
  proxyPatch: "proxy",
  proxyPost: "proxy",
  proxyPut: "proxy",
  refreshConnection: "refreshConnection",
  resetIntegration: "resetIntegration",
  revokeConnection: "revokeConnection",
};

test("every operation of the API has a method", () => {
  for (const [operation, method] of Object.entries(METHOD_FOR)) {
    assert.equal(typeof Tokenvault.prototype[method], "function", `${operation} → ${method}`);
  }
});

test("a connect session for several integrations is a picker", async () => {
  const created = { id: "s", connect_url: "http://tv.test/connect/s", expires_at: "2030-01-01T00:00:00Z" };
  const { calls, fetch } = scripted([json(201, created), json(201, created)]);
  const tv = new Tokenvault({ baseUrl: "http://tv.test", apiKey: "k", fetch });
  await tv.createConnectSession("u", ["spotify", "tidal"], { connectUi: "page" });
  assert.deepEqual(JSON.parse((await calls[0]?.text()) ?? ""), {
    user_id: "u",
    integrations: ["spotify", "tidal"],
    connect_ui: "page",
  });
  await tv.createConnectSession("u", "spotify", { scopes: "a b", reconnect: true });
  assert.deepEqual(JSON.parse((await calls[1]?.text()) ?? ""), {
    user_id: "u",
    integration: "spotify",
    scopes: "a b",
    reconnect: true,
  });
});
