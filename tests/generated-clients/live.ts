// A short life against a live tokenvault, through the client generated
// from its /openapi.json by openapi-typescript + openapi-fetch: a connect
// session, a token read, the listing, the summary, the history, a proxy GET
// and POST. Run by scripts/generated-clients.sh.
import createClient from "openapi-fetch";
import type { paths } from "./generated/api.js";

const base = process.env.BASE;
const key = process.env.API_KEY;
if (!base || !key) throw new Error("BASE and API_KEY are required");

const client = createClient<paths>({
  baseUrl: base,
  headers: { Authorization: `Bearer ${key}` },
});

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const session = await client.POST("/v1/connect-sessions", {
  body: { user_id: "ts-user", integration: "demo", scopes: "read write" },
});
check(session.response.status === 201, `connect session: ${session.response.status}`);
check(session.data?.connect_url.startsWith(base) === true, "connect_url on the public URL");

const token = await client.GET("/v1/users/{user_id}/connections/{integration}/token", {
  params: { path: { user_id: "alice", integration: "demo" }, query: { min_ttl: 60 } },
});
check(token.response.status === 200, `token: ${token.response.status}`);
check((token.data?.access_token.length ?? 0) > 0, "an access token");

const missing = await client.GET("/v1/users/{user_id}/connections/{integration}/token", {
  params: { path: { user_id: "nobody", integration: "demo" } },
});
check(missing.response.status === 404, "no connection: 404");
check(missing.error?.error === "connection_not_found", "typed error body");

const listed = await client.GET("/v1/connections", {
  params: { query: { status: "connected", integration: "demo", limit: 10 } },
});
check(listed.response.status === 200, `listing: ${listed.response.status}`);
const alice = listed.data?.connections.find((c) => c.user_id === "alice");
check(alice?.status === "connected", "alice is listed as connected");

const summary = await client.GET("/v1/connections/summary");
check((summary.data?.by_status.connected ?? 0) >= 1, "the summary counts alice");

const history = await client.GET("/v1/users/{user_id}/connections/{integration}/events", {
  params: { path: { user_id: "alice", integration: "demo" } },
});
check(history.data?.events[0]?.kind === "created", "alice's history starts with created");

const got = await client.GET("/v1/proxy/{integration}/{user_id}/{path}", {
  params: { path: { integration: "demo", user_id: "alice", path: "echo" } },
  parseAs: "text",
});
check(got.response.status === 200, `proxy GET: ${got.response.status}`);
check(String(got.data).includes('"GET"'), "the provider answered the GET");
const posted = await client.POST("/v1/proxy/{integration}/{user_id}/{path}", {
  params: { path: { integration: "demo", user_id: "alice", path: "echo" } },
  body: JSON.stringify({ hello: "world" }),
  bodySerializer: (body) => body,
  headers: { "Content-Type": "application/json" },
  parseAs: "text",
});
check(posted.response.status === 200, `proxy POST: ${posted.response.status}`);
check(String(posted.data).includes("world"), "the provider saw the body");
console.log("typescript client: ok");
