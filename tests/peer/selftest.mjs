// Self-test for the tokenvault test peer.
//
//   cd tests/peer && npm ci && node selftest.mjs
//
// Starts server.mjs as a child process (PEER_PORT=0) and exercises every
// flow and hook with plain fetch (manual redirects + a tiny cookie jar).
// Prints one line per check and a closing "N passed, N failed" line;
// exits non-zero if anything failed.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as assert from 'node:assert/strict';

const SERVER = fileURLToPath(new URL('./server.mjs', import.meta.url));
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const REDIRECT = 'http://127.0.0.1:1/callback'; // never fetched: the jar stops at the callback

// ---------------------------------------------------------------------------
// Peer process
// ---------------------------------------------------------------------------

async function startPeer() {
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, PEER_PORT: '0' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const stderr = [];
  child.stderr.on('data', (d) => stderr.push(d));
  const stdoutLines = [];
  const rl = createInterface({ input: child.stdout });
  rl.on('line', (line) => stdoutLines.push(line));
  const deadline = Date.now() + 15_000;
  while (stdoutLines.length === 0) {
    if (child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`peer did not become ready:\n${Buffer.concat(stderr)}`);
    }
    await sleep(20);
  }
  const ready = JSON.parse(stdoutLines[0]);
  return { child, ready, stdoutLines, stderr: () => Buffer.concat(stderr).toString() };
}

async function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode;
  const timer = sleep(ms).then(() => 'timeout');
  const exited = once(child, 'exit').then(([code, signal]) => code ?? signal);
  return Promise.race([timer, exited]);
}

// ---------------------------------------------------------------------------
// Tiny test harness
// ---------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
let passed = 0;
let failed = 0;
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   - ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL - ${name}\n       ${String(err.stack ?? err).split('\n').slice(0, 6).join('\n       ')}`);
  }
}

// ---------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------

let ISSUER;
let DISCOVERY;

async function hook(method, path, body) {
  const res = await fetch(`${ISSUER}/__test/${path}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  return { status: res.status, json };
}

async function hookOk(method, path, body, expected = 200) {
  const { status, json } = await hook(method, path, body);
  assert.equal(status, expected, `${method} /__test/${path} -> ${status} ${JSON.stringify(json)}`);
  return json;
}

const b64u = (buf) => Buffer.from(buf).toString('base64url');

function pkce() {
  const verifier = b64u(randomBytes(32));
  return { verifier, challenge: b64u(createHash('sha256').update(verifier).digest()) };
}

/** A browser: cookie jar + manual redirect following, stopping at the client's redirect_uri. */
class Browser {
  constructor() {
    this.jar = new Map();
  }

  cookieHeader() {
    return [...this.jar].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  remember(res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attrs.some((a) => /^\s*expires=Thu, 01 Jan 1970/i.test(a) || /^\s*max-age=0\b/i.test(a));
      if (expired || value === '') this.jar.delete(name); else this.jar.set(name, value);
    }
  }

  /** Follows redirects from `url` until one points at `redirectUri`; returns that URL. */
  async authorize(url, redirectUri) {
    let next = url;
    for (let hops = 0; hops < 20; hops += 1) {
      if (next.startsWith(redirectUri)) return new URL(next);
      const res = await fetch(next, { redirect: 'manual', headers: { cookie: this.cookieHeader() } });
      this.remember(res);
      const location = res.headers.get('location');
      if (res.status < 300 || res.status >= 400 || !location) {
        throw new Error(`authorization stopped at ${next}: ${res.status} ${(await res.text()).slice(0, 300)}`);
      }
      next = new URL(location, next).href;
    }
    throw new Error('too many redirects');
  }
}

function authUrl(params) {
  const u = new URL(DISCOVERY.authorization_endpoint);
  for (const [k, v] of Object.entries(params)) if (v !== undefined) u.searchParams.set(k, v);
  return u.href;
}

/** POST a form to an endpoint; `auth` = {basic:[id,secret]} adds an Authorization header. */
async function postForm(url, form, { basic } = {}) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
  if (basic) headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(basic[0])}:${encodeURIComponent(basic[1])}`).toString('base64')}`;
  const started = Date.now();
  const res = await fetch(url, { method: 'POST', headers, body: new URLSearchParams(form) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, json, text, headers: res.headers, ms: Date.now() - started };
}

const token = (form, opts) => postForm(DISCOVERY.token_endpoint, form, opts);

function expectError(res, status, error) {
  assert.equal(res.status, status, `expected ${status} ${error}, got ${res.status} ${res.text}`);
  assert.equal(res.json?.error, error, `expected ${error}, got ${res.text}`);
}

function expectTokens(res, { refresh = true } = {}) {
  assert.equal(res.status, 200, `token request failed: ${res.status} ${res.text}`);
  assert.equal(typeof res.json.access_token, 'string');
  assert.equal(res.json.token_type, 'Bearer');
  if (refresh) assert.equal(typeof res.json.refresh_token, 'string', `no refresh_token in ${res.text}`);
  else assert.equal(res.json.refresh_token, undefined);
  return res.json;
}

/** Runs a full code flow; returns { callback, code, tokens? }. */
async function codeFlow({ browser = new Browser(), clientId, scope = 'openid profile email api:read', usePkce = true, exchange }) {
  const state = b64u(randomBytes(8));
  const p = pkce();
  const callback = await browser.authorize(authUrl({
    client_id: clientId,
    response_type: 'code',
    redirect_uri: REDIRECT,
    scope,
    state,
    code_challenge: usePkce ? p.challenge : undefined,
    code_challenge_method: usePkce ? 'S256' : undefined,
  }), REDIRECT);
  const q = Object.fromEntries(callback.searchParams);
  assert.equal(q.state, state, `state mismatch in ${callback}`);
  assert.equal(q.iss, ISSUER, `iss missing/wrong in ${callback}`);
  if (!exchange) return { callback, q, verifier: p.verifier };
  assert.ok(q.code, `no code in ${callback}`);
  const res = await exchange({
    grant_type: 'authorization_code', code: q.code, redirect_uri: REDIRECT,
    ...(usePkce ? { code_verifier: p.verifier } : {}),
  });
  return { callback, q, res };
}

async function userinfo(accessToken) {
  const res = await fetch(DISCOVERY.userinfo_endpoint, { headers: { authorization: `Bearer ${accessToken}` } });
  return { status: res.status, json: await res.json().catch(() => undefined), headers: res.headers };
}

// ---------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------

const peer = await startPeer();
ISSUER = peer.ready.issuer;

try {
  await check('ready line', async () => {
    assert.equal(peer.ready.ready, true);
    assert.match(ISSUER, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(peer.stdoutLines[0], JSON.stringify({ ready: true, issuer: ISSUER }));
  });

  await check('discovery', async () => {
    const res = await fetch(`${ISSUER}/.well-known/openid-configuration`);
    assert.equal(res.status, 200);
    DISCOVERY = await res.json();
    assert.equal(DISCOVERY.issuer, ISSUER);
    assert.equal(DISCOVERY.authorization_response_iss_parameter_supported, true);
    assert.deepEqual(DISCOVERY.code_challenge_methods_supported, ['S256']);
    for (const gt of ['authorization_code', 'refresh_token', 'client_credentials', DEVICE_GRANT]) {
      assert.ok(DISCOVERY.grant_types_supported.includes(gt), gt);
    }
    for (const s of ['openid', 'offline_access', 'profile', 'email', 'api:read', 'api:write']) {
      assert.ok(DISCOVERY.scopes_supported.includes(s), s);
    }
    for (const m of ['none', 'client_secret_basic', 'client_secret_post']) {
      assert.ok(DISCOVERY.token_endpoint_auth_methods_supported.includes(m), m);
    }
    for (const ep of ['token_endpoint', 'userinfo_endpoint', 'revocation_endpoint', 'device_authorization_endpoint', 'jwks_uri']) {
      assert.ok(DISCOVERY[ep]?.startsWith(`${ISSUER}/`), ep);
    }
  });

  await check('register clients at runtime (201) and reject invalid metadata (400)', async () => {
    await hookOk('POST', 'clients', {
      client_id: 'public-app', token_endpoint_auth_method: 'none',
      redirect_uris: [REDIRECT], grant_types: ['authorization_code', 'refresh_token'],
    }, 201);
    await hookOk('POST', 'clients', {
      client_id: 'conf-basic', client_secret: 'basic-secret', token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: [REDIRECT], grant_types: ['authorization_code', 'refresh_token'],
    }, 201);
    await hookOk('POST', 'clients', {
      client_id: 'conf-post', client_secret: 'post-secret', token_endpoint_auth_method: 'client_secret_post',
      redirect_uris: [REDIRECT], grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
      scope: 'openid profile email api:read api:write offline_access',
    }, 201);
    await hookOk('POST', 'clients', {
      client_id: 'device-app', token_endpoint_auth_method: 'none', grant_types: [DEVICE_GRANT, 'refresh_token'],
    }, 201);
    await hookOk('POST', 'clients', {
      client_id: 'service', client_secret: 'service-secret', grant_types: ['client_credentials'],
      scope: 'api:read api:write',
    }, 201);
    const bad = await hook('POST', 'clients', { client_id: 'bad', token_endpoint_auth_method: 'client_secret_basic', redirect_uris: [REDIRECT] });
    assert.equal(bad.status, 400, JSON.stringify(bad.json)); // secret missing
  });

  let pub; // tokens of the public client, reused below
  await check('code + PKCE, public client: callback has code/state/iss; exchange; id_token', async () => {
    const { res } = await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) });
    pub = expectTokens(res);
    assert.equal(res.json.expires_in, 3600);
    assert.equal(typeof res.json.id_token, 'string');
    assert.deepEqual(new Set(res.json.scope.split(' ')), new Set(['openid', 'profile', 'email', 'api:read']));
  });

  await check('PKCE is required for public clients; wrong verifier -> invalid_grant', async () => {
    const { q } = await codeFlow({ clientId: 'public-app', usePkce: false });
    assert.equal(q.error, 'invalid_request', JSON.stringify(q));
    const { q: q2 } = await codeFlow({ clientId: 'public-app' });
    const res = await token({
      grant_type: 'authorization_code', code: q2.code, redirect_uri: REDIRECT, client_id: 'public-app',
      code_verifier: pkce().verifier,
    });
    expectError(res, 400, 'invalid_grant');
  });

  await check('userinfo with the access token', async () => {
    const res = await userinfo(pub.access_token);
    assert.equal(res.status, 200);
    assert.deepEqual(res.json, {
      sub: 'test-user', name: 'Test User', email: 'test-user@example.test', email_verified: true,
    });
    const bad = await userinfo('not-a-token');
    assert.equal(bad.status, 401);
  });

  await check('confidential client_secret_basic code exchange (no PKCE)', async () => {
    const { res } = await codeFlow({
      clientId: 'conf-basic', usePkce: false, exchange: (f) => token(f, { basic: ['conf-basic', 'basic-secret'] }),
    });
    expectTokens(res);
  });

  await check('confidential client_secret_post code exchange (with PKCE)', async () => {
    const { res } = await codeFlow({
      clientId: 'conf-post', exchange: (f) => token({ ...f, client_id: 'conf-post', client_secret: 'post-secret' }),
    });
    expectTokens(res);
  });

  await check('wrong secret / unknown client -> 401 invalid_client', async () => {
    const { q } = await codeFlow({ clientId: 'conf-basic', usePkce: false });
    expectError(await token({ grant_type: 'authorization_code', code: q.code, redirect_uri: REDIRECT }, { basic: ['conf-basic', 'wrong'] }), 401, 'invalid_client');
    expectError(await token({ grant_type: 'client_credentials', client_id: 'conf-post', client_secret: 'wrong' }), 401, 'invalid_client');
    expectError(await token({ grant_type: 'client_credentials' }, { basic: ['nobody', 'x'] }), 401, 'invalid_client');
    expectError(await token({ grant_type: 'refresh_token', refresh_token: 'x', client_id: 'nobody' }), 401, 'invalid_client');
  });

  await check('refresh rotates; reuse of old RT -> invalid_grant and the grant (new RT) is revoked', async () => {
    const before = await hookOk('GET', 'stats');
    const r1 = await token({ grant_type: 'refresh_token', refresh_token: pub.refresh_token, client_id: 'public-app' });
    const t1 = expectTokens(r1);
    assert.notEqual(t1.refresh_token, pub.refresh_token, 'refresh token was not rotated');
    assert.notEqual(t1.access_token, pub.access_token);
    assert.equal((await userinfo(t1.access_token)).status, 200);

    const reuse = await token({ grant_type: 'refresh_token', refresh_token: pub.refresh_token, client_id: 'public-app' });
    expectError(reuse, 400, 'invalid_grant');
    const after = await token({ grant_type: 'refresh_token', refresh_token: t1.refresh_token, client_id: 'public-app' });
    expectError(after, 400, 'invalid_grant');
    assert.equal((await userinfo(t1.access_token)).status, 401, 'access token of the revoked grant still works');
    const stats = await hookOk('GET', 'stats');
    assert.equal(stats.grants_revoked - before.grants_revoked, 1);
  });

  await check('confidential refresh rotates too (client_secret_basic)', async () => {
    const { res } = await codeFlow({
      clientId: 'conf-basic', usePkce: false, exchange: (f) => token(f, { basic: ['conf-basic', 'basic-secret'] }),
    });
    const t0 = expectTokens(res);
    const t1 = expectTokens(await token({ grant_type: 'refresh_token', refresh_token: t0.refresh_token }, { basic: ['conf-basic', 'basic-secret'] }));
    assert.notEqual(t1.refresh_token, t0.refresh_token);
    expectError(await token({ grant_type: 'refresh_token', refresh_token: t0.refresh_token }, { basic: ['conf-basic', 'basic-secret'] }), 400, 'invalid_grant');
  });

  await check('concurrent reuse of one RT: exactly one success, refresh_by_grant counts 1', async () => {
    await hookOk('POST', 'reset');
    const { res } = await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) });
    const t0 = expectTokens(res);
    const N = 20;
    const results = await Promise.all(Array.from({ length: N }, () => token({
      grant_type: 'refresh_token', refresh_token: t0.refresh_token, client_id: 'public-app',
    })));
    const ok = results.filter((r) => r.status === 200);
    const bad = results.filter((r) => r.status === 400 && r.json.error === 'invalid_grant');
    assert.equal(ok.length, 1, results.map((r) => r.status).join(','));
    assert.equal(bad.length, N - 1);
    const stats = await hookOk('GET', 'stats');
    assert.equal(stats.token_requests.refresh_token, N);
    assert.equal(stats.token_successes.refresh_token, 1);
    assert.equal(stats.token_errors.refresh_token, N - 1);
    const perGrant = Object.values(stats.refresh_by_grant);
    assert.deepEqual(perGrant, [1], JSON.stringify(stats.refresh_by_grant));
    assert.deepEqual(stats.refresh_by_client, { 'public-app': 1 });
  });

  await check('interaction deny -> error=access_denied (with state and iss) at redirect_uri', async () => {
    const browser = new Browser();
    await codeFlow({ browser, clientId: 'public-app' }); // logged-in session with a full grant
    await hookOk('POST', 'config', { interaction: 'deny' });
    try {
      const { q } = await codeFlow({ browser, clientId: 'public-app' });
      assert.equal(q.error, 'access_denied', JSON.stringify(q));
      assert.equal(q.code, undefined);
      const { q: q2 } = await codeFlow({ clientId: 'conf-basic', usePkce: false });
      assert.equal(q2.error, 'access_denied');
    } finally {
      await hookOk('POST', 'config', { interaction: 'approve' });
    }
    const { q } = await codeFlow({ browser, clientId: 'public-app' });
    assert.ok(q.code, 'approve again should give a code');
  });

  await check('account hook: same browser session logs in the newly configured account', async () => {
    const browser = new Browser();
    const ex = (f) => token({ ...f, client_id: 'public-app' });
    const first = expectTokens((await codeFlow({ browser, clientId: 'public-app', exchange: ex })).res);
    assert.equal((await userinfo(first.access_token)).json.sub, 'test-user');
    await hookOk('POST', 'config', { account: 'alice' });
    try {
      const second = expectTokens((await codeFlow({ browser, clientId: 'public-app', exchange: ex })).res);
      const info = (await userinfo(second.access_token)).json;
      assert.equal(info.sub, 'alice');
      assert.equal(info.email, 'alice@example.test');
    } finally {
      await hookOk('POST', 'config', { account: 'test-user' });
    }
  });

  await check('device flow: pending -> approve -> tokens; hook 404/409', async () => {
    await hookOk('POST', 'config', { device_code_ttl: 120, device_interval: 1 });
    const da = await postForm(DISCOVERY.device_authorization_endpoint, { client_id: 'device-app', scope: 'openid profile api:read' });
    assert.equal(da.status, 200, da.text);
    const { device_code: deviceCode, user_code: userCode } = da.json;
    assert.equal(da.json.expires_in, 120);
    assert.equal(da.json.interval, 1);
    assert.ok(da.json.verification_uri.startsWith(ISSUER));
    const poll = () => token({ grant_type: DEVICE_GRANT, device_code: deviceCode, client_id: 'device-app' });

    expectError(await poll(), 400, 'authorization_pending');
    assert.equal((await hook('POST', 'device/approve', { user_code: 'BCDF-GHJK-NOPE' })).status, 404);
    const approved = await hookOk('POST', 'device/approve', { user_code: userCode.toLowerCase() });
    assert.equal(approved.account, 'test-user');
    assert.equal((await hook('POST', 'device/approve', { user_code: userCode })).status, 409);

    const t = expectTokens(await poll());
    assert.deepEqual(new Set(t.scope.split(' ')), new Set(['openid', 'profile', 'api:read']));
    assert.equal(typeof t.id_token, 'string');
    assert.equal((await userinfo(t.access_token)).json.name, 'Test User');
    // device-issued refresh tokens rotate like any other
    const t2 = expectTokens(await token({ grant_type: 'refresh_token', refresh_token: t.refresh_token, client_id: 'device-app' }));
    assert.notEqual(t2.refresh_token, t.refresh_token);
    // replaying the used device code fails and (oidc-provider) revokes the grant
    expectError(await poll(), 400, 'invalid_grant');
    expectError(await token({ grant_type: 'refresh_token', refresh_token: t2.refresh_token, client_id: 'device-app' }), 400, 'invalid_grant');
  });

  await check('device flow: deny -> access_denied', async () => {
    const da = await postForm(DISCOVERY.device_authorization_endpoint, { client_id: 'device-app', scope: 'openid' });
    assert.equal(da.status, 200, da.text);
    expectError(await token({ grant_type: DEVICE_GRANT, device_code: da.json.device_code, client_id: 'device-app' }), 400, 'authorization_pending');
    await hookOk('POST', 'device/deny', { user_code: da.json.user_code });
    expectError(await token({ grant_type: DEVICE_GRANT, device_code: da.json.device_code, client_id: 'device-app' }), 400, 'access_denied');
    assert.equal((await hook('POST', 'device/deny', { user_code: 'ZZZZ-ZZZZ' })).status, 404);
  });

  await check('client_credentials (+ access_token_ttl hook)', async () => {
    const t = expectTokens(await token({ grant_type: 'client_credentials', scope: 'api:read' }, { basic: ['service', 'service-secret'] }), { refresh: false });
    assert.equal(t.expires_in, 3600);
    assert.equal(t.scope, 'api:read');
    await hookOk('POST', 'config', { access_token_ttl: 120 });
    try {
      const t2 = expectTokens(await token({ grant_type: 'client_credentials' }, { basic: ['service', 'service-secret'] }), { refresh: false });
      assert.equal(t2.expires_in, 120);
      const { res } = await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) });
      assert.equal(expectTokens(res).expires_in, 120);
    } finally {
      await hookOk('POST', 'config', { access_token_ttl: 3600 });
    }
    const bad = await hook('POST', 'config', { access_token_ttl: -1 });
    assert.equal(bad.status, 400);
  });

  await check('revocation endpoint: access token and refresh token', async () => {
    const before = await hookOk('GET', 'stats');
    const { res } = await codeFlow({ clientId: 'conf-post', exchange: (f) => token({ ...f, client_id: 'conf-post', client_secret: 'post-secret' }) });
    const t = expectTokens(res);
    const creds = { client_id: 'conf-post', client_secret: 'post-secret' };
    const r1 = await postForm(DISCOVERY.revocation_endpoint, { ...creds, token: t.access_token, token_type_hint: 'access_token' });
    assert.equal(r1.status, 200, r1.text);
    assert.equal((await userinfo(t.access_token)).status, 401);
    const r2 = await postForm(DISCOVERY.revocation_endpoint, { ...creds, token: t.refresh_token });
    assert.equal(r2.status, 200, r2.text);
    expectError(await token({ grant_type: 'refresh_token', refresh_token: t.refresh_token, ...creds }), 400, 'invalid_grant');
    const r3 = await postForm(DISCOVERY.revocation_endpoint, { client_id: 'conf-post', client_secret: 'wrong', token: 'x' });
    expectError(r3, 401, 'invalid_client');
    const after = await hookOk('GET', 'stats');
    assert.equal(after.revocations - before.revocations, 2);
  });

  await check('revoke-grants hook: existing refresh tokens fail with invalid_grant', async () => {
    const { res } = await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) });
    const t = expectTokens(res);
    const out = await hookOk('POST', 'revoke-grants', { account: 'test-user' });
    assert.ok(out.revoked >= 1);
    expectError(await token({ grant_type: 'refresh_token', refresh_token: t.refresh_token, client_id: 'public-app' }), 400, 'invalid_grant');
    assert.equal((await userinfo(t.access_token)).status, 401);
    // a new authorization in a fresh session still works afterwards
    expectTokens((await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) })).res);
  });

  const sha256 = (value) => createHash('sha256').update(value).digest('hex');
  /** [grantId, record] of the grant whose newest refresh token is `rt`. */
  async function grantOf(rt) {
    const { grants } = await hookOk('GET', 'grants');
    const found = Object.entries(grants).filter(([, g]) => g.last_refresh_token_sha256 === sha256(rt));
    assert.equal(found.length, 1, `no single grant with that refresh token in ${JSON.stringify(grants)}`);
    return found[0];
  }

  await check('grants hook: code + 2 refreshes -> issued 3, last hash; survives reset; reuse -> revoked "reuse"', async () => {
    const cleared = await hookOk('DELETE', 'grants');
    assert.equal(typeof cleared.cleared, 'number');
    assert.deepEqual(await hookOk('GET', 'grants'), { grants: {} });
    const started = Date.now();
    const { res } = await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) });
    const t0 = expectTokens(res);
    const refresh = (rt) => token({ grant_type: 'refresh_token', refresh_token: rt, client_id: 'public-app' });
    const t1 = expectTokens(await refresh(t0.refresh_token));
    const t2 = expectTokens(await refresh(t1.refresh_token));

    await hookOk('POST', 'reset'); // must not clear the grants record
    const { grants } = await hookOk('GET', 'grants');
    const ids = Object.keys(grants);
    assert.equal(ids.length, 1, JSON.stringify(grants));
    const grantId = ids[0];
    const g = grants[grantId];
    assert.deepEqual(Object.keys(g).sort(), [
      'account', 'client_id', 'issued', 'last_issued_at', 'last_refresh_token_sha256', 'revoked', 'revoked_at',
      'revoked_reason', 'reused_refresh_token_sha256', 'reused_token_consumed_at', 'reused_token_issued_at',
    ].sort());
    assert.equal(g.client_id, 'public-app');
    assert.equal(g.account, 'test-user');
    assert.equal(g.issued, 3);
    assert.equal(g.last_refresh_token_sha256, sha256(t2.refresh_token));
    assert.ok(g.last_issued_at >= started && g.last_issued_at <= Date.now(), String(g.last_issued_at));
    assert.equal(g.revoked, false);
    assert.equal(g.revoked_at, null);
    assert.equal(g.revoked_reason, null);
    assert.equal(g.reused_refresh_token_sha256, null);

    // grantId is oidc-provider's: the same key as stats.refresh_by_grant
    expectTokens(await refresh(t2.refresh_token)).refresh_token;
    assert.deepEqual(Object.keys((await hookOk('GET', 'stats')).refresh_by_grant), [grantId]);

    const beforeReuse = Date.now();
    expectError(await refresh(t1.refresh_token), 400, 'invalid_grant'); // t1 was rotated: reuse
    const r = (await hookOk('GET', 'grants')).grants[grantId];
    assert.equal(r.revoked, true);
    assert.equal(r.revoked_reason, 'reuse');
    assert.ok(r.revoked_at >= beforeReuse, String(r.revoked_at));
    assert.equal(r.reused_refresh_token_sha256, sha256(t1.refresh_token));
    assert.ok(r.reused_token_issued_at >= started && r.reused_token_issued_at <= r.reused_token_consumed_at,
      JSON.stringify(r));
    assert.ok(r.reused_token_consumed_at < beforeReuse, JSON.stringify(r));
    assert.equal(r.issued, 4);
    // a later failure on the revoked grant does not overwrite the first revocation
    expectError(await refresh(t0.refresh_token), 400, 'invalid_grant');
    assert.deepEqual((await hookOk('GET', 'grants')).grants[grantId], r);
  });

  await check('grants hook: concurrent reuse, device flow, code reuse, revocation endpoint, revoke-grants, DELETE', async () => {
    const refresh = (rt, clientId = 'public-app') => token({ grant_type: 'refresh_token', refresh_token: rt, client_id: clientId });

    // 20 concurrent uses of one RT: one rotation, one revocation by reuse of that RT
    const t0 = expectTokens((await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) })).res);
    const [gid] = await grantOf(t0.refresh_token);
    const results = await Promise.all(Array.from({ length: 20 }, () => refresh(t0.refresh_token)));
    assert.equal(results.filter((x) => x.status === 200).length, 1);
    let g = (await hookOk('GET', 'grants')).grants[gid];
    assert.equal(g.issued, 2);
    assert.equal(g.revoked_reason, 'reuse');
    assert.equal(g.reused_refresh_token_sha256, sha256(t0.refresh_token));
    assert.equal(typeof g.reused_token_consumed_at, 'number');

    // device_code grant issues (and refreshes) into the record too
    const da = await postForm(DISCOVERY.device_authorization_endpoint, { client_id: 'device-app', scope: 'openid' });
    await hookOk('POST', 'device/approve', { user_code: da.json.user_code });
    const poll = () => token({ grant_type: DEVICE_GRANT, device_code: da.json.device_code, client_id: 'device-app' });
    const d0 = expectTokens(await poll());
    const [did, d] = await grantOf(d0.refresh_token);
    assert.equal(d.issued, 1);
    assert.equal(d.client_id, 'device-app');
    const d1 = expectTokens(await refresh(d0.refresh_token, 'device-app'));
    assert.equal((await grantOf(d1.refresh_token))[0], did);
    expectError(await poll(), 400, 'invalid_grant'); // device code reuse: reason "reuse", no RT involved
    g = (await hookOk('GET', 'grants')).grants[did];
    assert.equal(g.issued, 2);
    assert.equal(g.revoked_reason, 'reuse');
    assert.equal(g.reused_refresh_token_sha256, null);

    // authorization code reuse
    const flow = await codeFlow({ clientId: 'public-app' });
    const exchange = () => token({
      grant_type: 'authorization_code', code: flow.q.code, redirect_uri: REDIRECT, client_id: 'public-app', code_verifier: flow.verifier,
    });
    const c0 = expectTokens(await exchange());
    const [cid] = await grantOf(c0.refresh_token);
    expectError(await exchange(), 400, 'invalid_grant');
    g = (await hookOk('GET', 'grants')).grants[cid];
    assert.equal(g.revoked, true, 'code reuse should revoke the grant');
    assert.equal(g.revoked_reason, 'reuse');
    assert.equal(g.reused_refresh_token_sha256, null);

    // RFC 7009 revocation of a refresh token
    const creds = { client_id: 'conf-post', client_secret: 'post-secret' };
    const p0 = expectTokens((await codeFlow({ clientId: 'conf-post', exchange: (f) => token({ ...f, ...creds }) })).res);
    const [pid] = await grantOf(p0.refresh_token);
    assert.equal((await postForm(DISCOVERY.revocation_endpoint, { ...creds, token: p0.refresh_token })).status, 200);
    g = (await hookOk('GET', 'grants')).grants[pid];
    assert.equal(g.revoked_reason, 'revocation');
    assert.equal(g.client_id, 'conf-post');
    assert.equal(g.reused_refresh_token_sha256, null);

    // the revoke-grants hook
    await hookOk('POST', 'config', { account: 'grant-hook-user' });
    let h0;
    try {
      h0 = expectTokens((await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) })).res);
    } finally {
      await hookOk('POST', 'config', { account: 'test-user' });
    }
    const [hid, h] = await grantOf(h0.refresh_token);
    assert.equal(h.account, 'grant-hook-user');
    assert.equal((await hookOk('POST', 'revoke-grants', { account: 'grant-hook-user' })).revoked, 1);
    g = (await hookOk('GET', 'grants')).grants[hid];
    assert.equal(g.revoked_reason, 'hook');
    assert.equal(typeof g.revoked_at, 'number');

    // DELETE clears the record
    const { grants } = await hookOk('GET', 'grants');
    assert.deepEqual(await hookOk('DELETE', 'grants'), { cleared: Object.keys(grants).length });
    assert.deepEqual(await hookOk('GET', 'grants'), { grants: {} });
  });

  await check('faults: 429 + Retry-After, 503, then success; grant_type filter; delay; stats', async () => {
    await hookOk('POST', 'reset');
    const { res } = await codeFlow({ clientId: 'public-app', exchange: (f) => token({ ...f, client_id: 'public-app' }) });
    let t = expectTokens(res);
    const refresh = () => token({ grant_type: 'refresh_token', refresh_token: t.refresh_token, client_id: 'public-app' });

    await hookOk('POST', 'faults', { faults: [
      { status: 429, retry_after: '2', grant_type: 'refresh_token' },
      { status: 503, grant_type: 'refresh_token' },
    ] });
    // a client_credentials request does not match the refresh_token faults
    expectTokens(await token({ grant_type: 'client_credentials' }, { basic: ['service', 'service-secret'] }), { refresh: false });

    const f1 = await refresh();
    assert.equal(f1.status, 429);
    assert.equal(f1.headers.get('retry-after'), '2');
    assert.deepEqual(f1.json, { error: 'rate_limited' });
    const f2 = await refresh();
    assert.equal(f2.status, 503);
    assert.deepEqual(f2.json, { error: 'server_error' });
    assert.equal(f2.headers.get('retry-after'), null);
    t = expectTokens(await refresh()); // the faulted requests never reached the provider: RT still valid

    // custom body, grant_type-less fault matches anything
    await hookOk('POST', 'faults', { faults: [{ status: 400, body: { error: 'slow_down' } }] });
    expectError(await refresh(), 400, 'slow_down');

    // delay-only fault: slow provider, then the real answer
    await hookOk('POST', 'faults', { faults: [{ delay_ms: 400 }] });
    const slow = await refresh();
    t = expectTokens(slow);
    assert.ok(slow.ms >= 380, `delay not applied (${slow.ms} ms)`);

    // delay + status
    await hookOk('POST', 'faults', { faults: [{ status: 502, delay_ms: 200 }] });
    const slowFail = await refresh();
    assert.equal(slowFail.status, 502);
    assert.ok(slowFail.ms >= 180);

    // DELETE clears the queue
    await hookOk('POST', 'faults', { faults: [{ status: 500 }, { status: 500 }] });
    assert.equal((await hookOk('GET', 'faults')).faults.length, 2);
    await hookOk('DELETE', 'faults');
    t = expectTokens(await refresh());

    const bad = await hook('POST', 'faults', { faults: [{ grant_type: 'refresh_token' }] });
    assert.equal(bad.status, 400);

    // exact counters since the reset
    await userinfo(t.access_token);
    const stats = await hookOk('GET', 'stats');
    assert.deepEqual(stats.token_requests, { authorization_code: 1, refresh_token: 7, client_credentials: 1 });
    assert.deepEqual(stats.token_successes, { authorization_code: 1, refresh_token: 3, client_credentials: 1 });
    assert.deepEqual(stats.token_errors, {});
    assert.equal(stats.faults_served, 4);
    assert.equal(stats.delays_applied, 1);
    assert.deepEqual(Object.values(stats.refresh_by_grant), [3]);
    assert.equal(stats.userinfo_requests, 1);
    assert.equal(stats.revocations, 0);
  });

  await check('reset clears stats and faults but keeps clients', async () => {
    await hookOk('POST', 'faults', { faults: [{ status: 500 }] });
    await hookOk('POST', 'reset');
    const stats = await hookOk('GET', 'stats');
    assert.deepEqual(stats.token_requests, {});
    assert.equal(stats.faults_served, 0);
    assert.equal((await hookOk('GET', 'faults')).faults.length, 0);
    expectTokens(await token({ grant_type: 'client_credentials' }, { basic: ['service', 'service-secret'] }), { refresh: false });
    assert.equal((await hook('GET', 'nope')).status, 404);
  });

  await check('replacing a client at runtime takes effect (new secret)', async () => {
    await hookOk('POST', 'clients', { client_id: 'service', client_secret: 'rotated', grant_types: ['client_credentials'] }, 201);
    expectError(await token({ grant_type: 'client_credentials' }, { basic: ['service', 'service-secret'] }), 401, 'invalid_client');
    expectTokens(await token({ grant_type: 'client_credentials' }, { basic: ['service', 'rotated'] }), { refresh: false });
  });

  await check('stdout carried only the ready line', async () => {
    assert.deepEqual(peer.stdoutLines, [JSON.stringify({ ready: true, issuer: ISSUER })]);
  });

  await check('SIGTERM -> prompt exit', async () => {
    peer.child.kill('SIGTERM');
    const code = await waitExit(peer.child, 3000);
    assert.equal(code, 0);
  });

  await check('stdin close -> prompt exit', async () => {
    const other = await startPeer();
    other.child.stdin.end();
    const code = await waitExit(other.child, 3000);
    if (code === 'timeout') other.child.kill('SIGKILL');
    assert.equal(code, 0);
  });
} finally {
  if (peer.child.exitCode === null && peer.child.signalCode === null) peer.child.kill('SIGKILL');
}

if (failed) {
  console.log('\n--- peer stderr ---');
  console.log(peer.stderr());
}
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
