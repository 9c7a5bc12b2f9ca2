// tokenvault test peer: a loopback OAuth 2.0 / OpenID Connect authorization
// server built on oidc-provider, plus plain-JSON test hooks under /__test/.
//
//   PEER_PORT=0 node tests/peer/server.mjs
//
// prints exactly one line to stdout once listening:
//   {"ready":true,"issuer":"http://127.0.0.1:<port>"}
// and runs until SIGTERM/SIGINT or until its stdin (when it is a pipe) closes.
// Everything else (oidc-provider notices, warnings, errors) goes to stderr.
// See README.md for the hooks.

import { createHash, randomBytes, generateKeyPairSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import { Store, adapterFactory } from './adapter.mjs';

// stdout carries only the ready line. oidc-provider prints some notices with
// console.info, so route every console method to stderr *before* loading it.
for (const method of ['log', 'info', 'debug']) console[method] = console.error;
const { default: Provider, interactionPolicy, errors } = await import('oidc-provider');
const { Check, base: basePolicy } = interactionPolicy;

// ---------------------------------------------------------------------------
// Mutable test state
// ---------------------------------------------------------------------------

const SCOPES = ['openid', 'offline_access', 'profile', 'email', 'api:read', 'api:write'];

const DEFAULT_CONFIG = Object.freeze({
  access_token_ttl: 3600,
  refresh_token_ttl: 30 * 24 * 3600,
  device_code_ttl: 600,
  device_interval: 5,
  account: 'test-user',
  interaction: 'approve',
});
const config = { ...DEFAULT_CONFIG };

/** FIFO of token-endpoint faults, see POST /__test/faults. */
let faults = [];

function freshStats() {
  return {
    token_requests: {}, // every POST /token, by grant_type (faulted ones included)
    token_successes: {}, // provider-issued 200s, by grant_type
    token_errors: {}, // provider-issued errors, by grant_type (faults excluded)
    refresh_by_grant: {}, // successful refresh_token grants, by oidc-provider grantId
    refresh_by_client: {}, // successful refresh_token grants, by client_id
    faults_served: 0, // requests answered by a fault instead of the provider
    delays_applied: 0, // delay-only faults that then let the request through
    revocations: 0, // successful (200) POSTs to the revocation endpoint
    grants_revoked: 0, // grants revoked by oidc-provider (e.g. refresh token reuse) or the hook
    userinfo_requests: 0, // every request to the userinfo endpoint
    authorizations: 0, // successful authorization (code issued / device approved via UI)
    device_authorizations: 0, // successful device authorization requests
  };
}
let stats = freshStats();

/**
 * Every secret value the peer saw or issued on the token and revocation
 * endpoints (codes, PKCE verifiers, client secrets, tokens), so a test can
 * assert that none of them reaches the client's logs. GET /__test/secrets.
 */
let secretsSeen = new Set();
function noteSecrets(...values) {
  for (const value of values) {
    if (typeof value === 'string' && value.length >= 8) secretsSeen.add(value);
  }
}
function noteClientAuth(ctx, params) {
  noteSecrets(params.get('client_secret'));
  const header = ctx.get('authorization');
  if (header.startsWith('Basic ')) {
    const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon >= 0) noteSecrets(decodeURIComponent(decoded.slice(colon + 1)));
  }
}

const bump = (map, key) => { map[key] = (map[key] ?? 0) + 1; };

// ---------------------------------------------------------------------------
// Grants record (GET /__test/grants): every refresh token issued, per grant,
// and how each grant was revoked. Survives POST /__test/reset; cleared only by
// DELETE /__test/grants. Tokens are kept as hex SHA-256 digests only.
// ---------------------------------------------------------------------------

const sha256 = (value) => createHash('sha256').update(value, 'utf8').digest('hex');

/** grantId -> record (the JSON shape of GET /__test/grants) */
let grantRecords = new Map();
/** sha256(refresh token) -> { grantId, issued_at, consumed_at } (ms epoch | null) */
let refreshTokenIndex = new Map();

function grantRecord(grantId, { clientId, accountId } = {}) {
  let record = grantRecords.get(grantId);
  if (!record) {
    record = {
      client_id: null,
      account: null,
      issued: 0,
      last_refresh_token_sha256: null,
      last_issued_at: null,
      revoked: false,
      revoked_at: null,
      revoked_reason: null,
      reused_refresh_token_sha256: null,
      reused_token_issued_at: null,
      reused_token_consumed_at: null,
    };
    grantRecords.set(grantId, record);
  }
  record.client_id ??= clientId ?? null;
  record.account ??= accountId ?? null;
  return record;
}

function refreshTokenEntry(hash, grantId) {
  let entry = refreshTokenIndex.get(hash);
  if (!entry) {
    entry = { grantId: grantId ?? null, issued_at: null, consumed_at: null };
    refreshTokenIndex.set(hash, entry);
  }
  return entry;
}

/** A refresh token reached a token response (authorization_code, device_code or refresh_token grant). */
function noteRefreshTokenIssued(grantId, value, { clientId, accountId }) {
  const now = Date.now();
  const hash = sha256(value);
  const record = grantRecord(grantId, { clientId, accountId });
  record.issued += 1;
  record.last_refresh_token_sha256 = hash;
  record.last_issued_at = now;
  const entry = refreshTokenEntry(hash, grantId);
  entry.grantId = grantId;
  entry.issued_at = now;
}

/**
 * A grant was revoked. Only the first revocation of a grant is recorded.
 * `reusedToken` is the consumed refresh token whose presentation revoked it.
 */
function noteGrantRevoked(grantId, reason, { clientId, accountId, reusedToken } = {}) {
  const record = grantRecord(grantId, { clientId, accountId });
  if (record.revoked) return;
  record.revoked = true;
  record.revoked_at = Date.now();
  record.revoked_reason = reason;
  if (typeof reusedToken === 'string' && reusedToken) {
    const hash = sha256(reusedToken);
    const entry = refreshTokenIndex.get(hash);
    record.reused_refresh_token_sha256 = hash;
    record.reused_token_issued_at = entry?.issued_at ?? null;
    record.reused_token_consumed_at = entry?.consumed_at ?? null;
  }
}

// ---------------------------------------------------------------------------
// Provider configuration
// ---------------------------------------------------------------------------

const store = new Store();

const ROUTES = {
  authorization: '/auth',
  code_verification: '/device',
  device_authorization: '/device/auth',
  end_session: '/session/end',
  introspection: '/token/introspection',
  jwks: '/jwks',
  revocation: '/token/revocation',
  token: '/token',
  userinfo: '/me',
};

function findAccount(_ctx, accountId) {
  return {
    accountId,
    // oidc-provider filters these by the granted scopes (see `claims` below).
    async claims() {
      return {
        sub: accountId,
        name: accountId === 'test-user' ? 'Test User' : `Test User ${accountId}`,
        email: `${accountId}@example.test`,
        email_verified: true,
      };
    },
  };
}

// Interaction policy: the stock login + consent prompts, plus two checks that
// make the test hooks effective even when the browser session (cookie jar)
// already has a logged-in user with a sufficient grant:
//  - the configured account changed -> force a new login;
//  - interaction is "deny"           -> force an interaction so it can be denied.
const policy = basePolicy();
policy.get('login').checks.add(new Check(
  'peer_account_changed',
  'the test peer is configured to log in another account',
  (ctx) => {
    const current = ctx.oidc.session.accountId;
    return current !== undefined && current !== config.account
      ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT;
  },
));
policy.get('login').checks.add(new Check(
  'peer_forced_deny',
  'the test peer is configured to deny',
  () => (config.interaction === 'deny' ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT),
));

function providerConfiguration() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    adapter: adapterFactory(store),
    // A fresh signing key per run (avoids oidc-provider's "dev keystore" notice).
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'peer-rs256', use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    routes: ROUTES,
    responseTypes: ['code', 'none'],
    // PEER_CLIENT_AUTH_METHODS=none: a server whose discovery document offers
    // only public clients (token_endpoint_auth_methods_supported: ["none"]).
    ...(process.env.PEER_CLIENT_AUTH_METHODS
      ? { clientAuthMethods: process.env.PEER_CLIENT_AUTH_METHODS.split(',') }
      : {}),
    findAccount,
    scopes: SCOPES,
    claims: {
      openid: ['sub'],
      profile: ['name'],
      email: ['email', 'email_verified'],
    },
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'RS256',
    },
    features: {
      devInteractions: { enabled: false }, // replaced by the automatic interaction below
      deviceFlow: { enabled: true },
      clientCredentials: { enabled: true },
      // Same policies as oidc-provider's defaults (a client may only revoke or
      // introspect its own tokens), spelled out to avoid its "should change" notices.
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => {
          if (token.clientId === client.clientId) return true;
          if (client.clientAuthMethod === 'none') return false; // silently ignored (200)
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        },
      },
      introspection: {
        enabled: true,
        allowedPolicy: async (_ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
      },
      userinfo: { enabled: true },
      // No resource indicators: access tokens stay opaque and usable at userinfo.
      resourceIndicators: { enabled: false },
    },
    interactions: {
      policy,
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    pkce: {
      // S256 is the only method oidc-provider supports. Required for public clients.
      required: (_ctx, client) => client.clientAuthMethod === 'none',
    },
    // Refresh tokens: always issued to clients allowed the refresh_token grant
    // (oidc-provider's default additionally requires the offline_access scope,
    // which it also strips unless prompt=consent), always rotated, and never
    // tied to the browser session.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    expiresWithSession: async () => false,
    ttl: {
      AccessToken: () => config.access_token_ttl,
      ClientCredentials: () => config.access_token_ttl,
      AuthorizationCode: 60,
      DeviceCode: () => config.device_code_ttl,
      IdToken: 3600,
      RefreshToken: () => config.refresh_token_ttl,
      Interaction: 3600,
      Session: 30 * 24 * 3600,
      Grant: 365 * 24 * 3600,
    },
    // Errors rendered as HTML for browsers: keep it short and free of external assets.
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><title>error</title><pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre>`;
    },
  };
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// ---------------------------------------------------------------------------
// Small HTTP helpers (for the Koa middleware below)
// ---------------------------------------------------------------------------

async function readRaw(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function readJson(ctx) {
  const raw = (await readRaw(ctx.req)).toString('utf8').trim();
  if (!raw) return {};
  try {
    return JSON.parse(raw);
  } catch {
    throw new HookError(400, 'body is not valid JSON');
  }
}

class HookError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function sendJson(ctx, status, body, headers = {}) {
  ctx.status = status;
  ctx.set('Cache-Control', 'no-store');
  for (const [k, v] of Object.entries(headers)) ctx.set(k, v);
  ctx.body = body; // Koa serializes objects as application/json
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/** Normalize a user code the way oidc-provider stores it ("bcdf-ghjk" -> "BCDFGHJK"). */
const normalizeUserCode = (input) => String(input).toUpperCase().replace(/\W/g, '');

const isPosInt = (v) => Number.isInteger(v) && v > 0;

// Serialize refresh_token grants per refresh token value. oidc-provider's
// find -> "already consumed?" -> consume sequence spans several awaits, so two
// truly concurrent requests carrying the same refresh token could both succeed.
// A real AS (with a transactional store) lets exactly one win; so does the peer:
// the loser sees a consumed token, gets invalid_grant, and the grant is revoked.
const refreshLocks = new Map();
async function withRefreshLock(key, fn) {
  const previous = refreshLocks.get(key) ?? Promise.resolve();
  let release;
  const mine = new Promise((resolve) => { release = resolve; });
  const tail = previous.then(() => mine);
  refreshLocks.set(key, tail);
  await previous;
  try {
    return await fn();
  } finally {
    release();
    if (refreshLocks.get(key) === tail) refreshLocks.delete(key);
  }
}

// ---------------------------------------------------------------------------
// Start: listen first (the issuer needs the port), then build the provider.
// ---------------------------------------------------------------------------

const server = http.createServer();
const requestedPort = Number.parseInt(process.env.PEER_PORT ?? '0', 10) || 0;
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, providerConfiguration());

// ----- events -> stats -----------------------------------------------------

provider.on('grant.success', (ctx) => {
  const gt = ctx.oidc.params.grant_type;
  bump(stats.token_successes, gt);
  if (gt === 'refresh_token') {
    bump(stats.refresh_by_grant, ctx.oidc.entities.RefreshToken?.grantId ?? 'unknown');
    bump(stats.refresh_by_client, ctx.oidc.client.clientId);
  }
  // grant.success is emitted after the grant handler has built the response
  // body, so body.refresh_token is exactly the string the client receives.
  // For all three grants that issue refresh tokens, the RefreshToken entity is
  // the newly issued token (opaque format: its jti *is* the token value); the
  // adapter lookup is a fallback that does not depend on that detail.
  const value = ctx.body?.refresh_token;
  if (typeof value !== 'string') return;
  const rt = ctx.oidc.entities.RefreshToken;
  const stored = store.get(`RefreshToken:${value}`);
  const grantId = (rt?.jti === value ? rt.grantId : undefined) ?? stored?.grantId ?? ctx.oidc.entities.Grant?.jti;
  if (!grantId) {
    console.error(`peer: issued a refresh token (${gt}) without a known grantId`);
    return;
  }
  noteRefreshTokenIssued(grantId, value, {
    clientId: ctx.oidc.client.clientId,
    accountId: rt?.accountId ?? stored?.accountId ?? ctx.oidc.entities.Account?.accountId,
  });
});
provider.on('grant.error', (ctx) => {
  bump(stats.token_errors, ctx.oidc?.params?.grant_type ?? ctx.oidc?.body?.grant_type ?? 'unknown');
});
// Model events receive the token instance; an opaque token's jti is its value.
// Emitted when a refresh token is rotated (marked consumed), before the new one is saved.
provider.on('refresh_token.consumed', (token) => {
  const entry = refreshTokenEntry(sha256(token.jti), token.grantId);
  entry.consumed_at ??= Date.now();
});
// oidc-provider revokes a grant (and emits this) on the token endpoint when a
// consumed refresh token, authorization code or device code is presented again,
// and on the revocation endpoint when a refresh token is revoked. The
// revoke-grants hook bypasses oidc-provider and records its revocations itself.
provider.on('grant.revoked', (ctx, grantId) => {
  stats.grants_revoked += 1;
  const { oidc } = ctx;
  const entities = oidc?.entities ?? {};
  const atToken = oidc?.route === 'token';
  noteGrantRevoked(grantId, atToken ? 'reuse' : 'revocation', {
    clientId: oidc?.client?.clientId,
    accountId: entities.Account?.accountId ?? entities.RefreshToken?.accountId,
    // the refresh_token form field, read by the token front door (handleToken)
    reusedToken: atToken && oidc.params?.grant_type === 'refresh_token'
      ? (ctx.state.peerRefreshToken ?? oidc.params.refresh_token) : undefined,
  });
});
provider.on('authorization.success', () => { stats.authorizations += 1; });
provider.on('device_authorization.success', (_ctx, body) => {
  stats.device_authorizations += 1;
  // oidc-provider omits `interval` (clients then default to 5 s); advertise the
  // configured one so tests can poll quickly. The event receives the very
  // object that becomes the response body.
  body.interval = config.device_interval;
});
provider.on('server_error', (_ctx, err) => {
  console.error('oidc-provider server_error:', err);
});

// ----- test hooks ----------------------------------------------------------

async function registerClient(body) {
  if (!body || typeof body !== 'object' || typeof body.client_id !== 'string' || !body.client_id) {
    throw new HookError(400, 'client_id (string) is required');
  }
  const grantTypes = body.grant_types ?? ['authorization_code', 'refresh_token'];
  const metadata = {
    ...body,
    grant_types: grantTypes,
    token_endpoint_auth_method: body.token_endpoint_auth_method ?? 'client_secret_basic',
    response_types: body.response_types ?? (grantTypes.includes('authorization_code') ? ['code'] : []),
    redirect_uris: body.redirect_uris ?? [],
  };
  // Validate with oidc-provider's own client schema (throws invalid_client_metadata).
  try {
    // eslint-disable-next-line no-new
    new provider.Client(metadata);
  } catch (err) {
    throw new HookError(400, `${err.error ?? err.name}: ${err.error_description ?? err.message}`);
  }
  // Clients are not configured statically; oidc-provider's Client.find() falls
  // back to the adapter, so upserting here registers or replaces the client.
  await provider.Client.adapter.upsert(metadata.client_id, metadata);
  return metadata;
}

function updateConfig(body) {
  const next = { ...config };
  for (const key of ['access_token_ttl', 'refresh_token_ttl', 'device_code_ttl', 'device_interval']) {
    if (body[key] === undefined) continue;
    if (!isPosInt(body[key])) throw new HookError(400, `${key} must be a positive integer (seconds)`);
    next[key] = body[key];
  }
  if (body.account !== undefined) {
    if (typeof body.account !== 'string' || !body.account) throw new HookError(400, 'account must be a non-empty string');
    next.account = body.account;
  }
  if (body.interaction !== undefined) {
    if (!['approve', 'deny'].includes(body.interaction)) throw new HookError(400, 'interaction must be "approve" or "deny"');
    next.interaction = body.interaction;
  }
  Object.assign(config, next);
  return config;
}

function addFaults(body) {
  if (!Array.isArray(body.faults)) throw new HookError(400, 'faults must be an array');
  for (const f of body.faults) {
    if (!f || typeof f !== 'object') throw new HookError(400, 'each fault must be an object');
    if (f.status === undefined && f.delay_ms === undefined) throw new HookError(400, 'a fault needs status and/or delay_ms');
    if (f.status !== undefined && !(Number.isInteger(f.status) && f.status >= 100 && f.status <= 599)) {
      throw new HookError(400, 'status must be an HTTP status code');
    }
    if (f.delay_ms !== undefined && !(Number.isFinite(f.delay_ms) && f.delay_ms >= 0)) {
      throw new HookError(400, 'delay_ms must be a non-negative number');
    }
    if (f.retry_after !== undefined && typeof f.retry_after !== 'string') {
      throw new HookError(400, 'retry_after must be a string (sent verbatim)');
    }
  }
  faults.push(...body.faults.map((f) => ({ ...f })));
  return faults.length;
}

async function decideDevice(body, approve) {
  if (typeof body.user_code !== 'string') throw new HookError(400, 'user_code (string) is required');
  // Documented model API; returns undefined for unknown or expired codes.
  const code = await provider.DeviceCode.findByUserCode(normalizeUserCode(body.user_code));
  if (!code) throw new HookError(404, 'unknown (or expired) user_code');
  if (code.accountId || code.error || code.consumed) throw new HookError(409, 'user_code already decided');

  if (!approve) {
    // The device_code grant turns a stored `error` into that OAuth error.
    code.error = 'access_denied';
    code.errorDescription = 'End-User denied the device authorization (test peer)';
    await code.save();
    return { denied: true, client_id: code.clientId };
  }

  // Same fields oidc-provider sets when a user approves in its device UI.
  const accountId = config.account;
  const requested = (code.params?.scope ?? '').split(' ').filter((s) => SCOPES.includes(s));
  const scope = requested.join(' ');
  const grant = new provider.Grant({ accountId, clientId: code.clientId });
  if (scope) grant.addOIDCScope(scope);
  const grantId = await grant.save();
  Object.assign(code, {
    accountId,
    grantId,
    scope: scope || undefined,
    authTime: Math.floor(Date.now() / 1000),
  });
  await code.save();
  return { approved: true, client_id: code.clientId, account: accountId, scope };
}

function revokeGrants(body) {
  let revoked = 0;
  for (const { id, payload } of store.all('Grant')) {
    if (body.account !== undefined && payload.accountId !== body.account) continue;
    store.revokeGrant(id);
    noteGrantRevoked(id, 'hook', { clientId: payload.clientId, accountId: payload.accountId });
    revoked += 1;
  }
  stats.grants_revoked += revoked;
  return { revoked };
}

async function handleHook(ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  switch (route) {
    case 'POST /__test/clients': {
      const client = await registerClient(await readJson(ctx));
      return sendJson(ctx, 201, client);
    }
    case 'GET /__test/config':
      return sendJson(ctx, 200, config);
    case 'POST /__test/config':
      return sendJson(ctx, 200, updateConfig(await readJson(ctx)));
    case 'POST /__test/device/approve':
      return sendJson(ctx, 200, await decideDevice(await readJson(ctx), true));
    case 'POST /__test/device/deny':
      return sendJson(ctx, 200, await decideDevice(await readJson(ctx), false));
    case 'POST /__test/faults':
      return sendJson(ctx, 200, { queued: addFaults(await readJson(ctx)) });
    case 'GET /__test/faults':
      return sendJson(ctx, 200, { faults });
    case 'DELETE /__test/faults':
      faults = [];
      return sendJson(ctx, 200, { queued: 0 });
    case 'GET /__test/stats':
      return sendJson(ctx, 200, stats);
    case 'GET /__test/secrets':
      return sendJson(ctx, 200, { secrets: [...secretsSeen] });
    case 'POST /__test/reset':
      stats = freshStats();
      secretsSeen = new Set();
      faults = [];
      return sendJson(ctx, 200, { reset: true });
    case 'GET /__test/grants':
      return sendJson(ctx, 200, { grants: Object.fromEntries(grantRecords) });
    case 'DELETE /__test/grants': {
      const cleared = grantRecords.size;
      grantRecords = new Map();
      refreshTokenIndex = new Map();
      return sendJson(ctx, 200, { cleared });
    }
    case 'POST /__test/revoke-grants':
      return sendJson(ctx, 200, revokeGrants(await readJson(ctx)));
    default:
      throw new HookError(404, `no such hook: ${route}`);
  }
}

// ----- automatic interaction ----------------------------------------------

// Completes login/consent without a human, the same way oidc-provider's
// devInteractions do after a form submit, but immediately on GET.
// Login and consent are two separate hops (each a 303) so consent sees
// oidc-provider's exact "missing" scope/claim details.
async function handleInteraction(ctx) {
  const interaction = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session, grantId } = interaction;
  if (prompt.name === 'login' && session?.accountId && session.accountId !== config.account
      && config.interaction !== 'deny') {
    // Logging a *different* account into an existing browser session makes
    // oidc-provider first run an RP-initiated logout through an auto-submitted
    // HTML form, which a redirect-following HTTP client cannot complete. So end
    // the old session server-side and detach it from this interaction; the
    // resumed authorization then starts a fresh session for the new account.
    const old = await provider.Session.findByUid(session.uid);
    await old?.destroy();
    delete interaction.session;
    await interaction.save(interaction.exp - Math.floor(Date.now() / 1000));
  }
  let result;
  if (config.interaction === 'deny') {
    result = { error: 'access_denied', error_description: 'End-User denied the request (test peer)' };
  } else if (prompt.name === 'login') {
    result = { login: { accountId: config.account } };
  } else if (prompt.name === 'consent') {
    let grant = grantId ? await provider.Grant.find(grantId) : undefined;
    grant ??= new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { details } = prompt;
    if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
    if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
    for (const [indicator, scope] of Object.entries(details.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    result = { error: 'interaction_required', error_description: `unsupported prompt ${prompt.name}` };
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

// ----- token endpoint front door: stats, faults, refresh serialization ------

function takeFault(grantType) {
  const i = faults.findIndex((f) => f.grant_type === undefined || f.grant_type === grantType);
  return i === -1 ? undefined : faults.splice(i, 1)[0];
}

function defaultFaultBody(status) {
  if (status === 429) return { error: 'rate_limited' };
  if (status >= 500) return { error: 'server_error' };
  return { error: 'invalid_request' };
}

async function handleToken(ctx, next) {
  // Read the form body here to learn grant_type. oidc-provider then uses the
  // pre-read body (it falls back to req.body when the stream was consumed and
  // prints a one-time warning about that on stderr).
  const raw = await readRaw(ctx.req);
  ctx.req.body = raw;
  const params = new URLSearchParams(raw.toString('utf8'));
  const grantType = params.get('grant_type') ?? 'unknown';
  bump(stats.token_requests, grantType);
  // The presented refresh token, for the grants record when its reuse revokes the grant.
  if (grantType === 'refresh_token') ctx.state.peerRefreshToken = params.get('refresh_token') ?? undefined;

  const fault = takeFault(grantType);
  if (fault?.delay_ms) await sleep(fault.delay_ms);
  if (fault?.status !== undefined) {
    stats.faults_served += 1;
    ctx.status = fault.status;
    ctx.set('Cache-Control', 'no-store');
    if (fault.retry_after !== undefined) ctx.set('Retry-After', fault.retry_after);
    const body = fault.body ?? defaultFaultBody(fault.status);
    if (typeof body === 'string') {
      ctx.type = 'text/plain';
      ctx.body = body; // raw body, e.g. an HTML error page from a "proxy"
    } else {
      ctx.body = body;
    }
    return;
  }
  if (fault) stats.delays_applied += 1;

  noteSecrets(params.get('code'), params.get('code_verifier'), params.get('refresh_token'), params.get('device_code'));
  noteClientAuth(ctx, params);
  if (grantType === 'refresh_token' && params.get('refresh_token')) {
    await withRefreshLock(params.get('refresh_token'), next);
  } else {
    await next();
  }
  const issued = ctx.body;
  if (issued && typeof issued === 'object') noteSecrets(issued.access_token, issued.refresh_token, issued.id_token);
}

// provider.use() inserts middleware in front of oidc-provider's own router.
provider.use(async (ctx, next) => {
  try {
    if (ctx.path.startsWith('/__test/')) return await handleHook(ctx);
    if (ctx.method === 'GET' && /^\/interaction\/[^/]+$/.test(ctx.path)) return await handleInteraction(ctx);
    if (ctx.method === 'POST' && ctx.path === ROUTES.token) return await handleToken(ctx, next);
    if (ctx.method === 'POST' && ctx.path === ROUTES.revocation) {
      const raw = await readRaw(ctx.req);
      ctx.req.body = raw;
      const params = new URLSearchParams(raw.toString('utf8'));
      noteSecrets(params.get('token'));
      noteClientAuth(ctx, params);
    }
    if (ctx.path === ROUTES.userinfo) stats.userinfo_requests += 1;
    await next();
    if (ctx.method === 'POST' && ctx.path === ROUTES.revocation && ctx.status === 200) stats.revocations += 1;
  } catch (err) {
    if (err instanceof HookError) return sendJson(ctx, err.status, { error: err.message });
    if (ctx.path.startsWith('/__test/') || ctx.path.startsWith('/interaction/')) {
      console.error(`peer: ${ctx.method} ${ctx.path} failed:`, err);
      return sendJson(ctx, err.statusCode ?? 500, { error: err.error ?? 'server_error', error_description: err.error_description ?? err.message });
    }
    throw err;
  }
  return undefined;
});

server.on('request', provider.callback());

// ---------------------------------------------------------------------------
// Ready line and shutdown
// ---------------------------------------------------------------------------

let stopping = false;
function shutdown() {
  if (stopping) return;
  stopping = true;
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// Exit when the parent closes our stdin, but only if stdin is a pipe/socket:
// /dev/null (e.g. Stdio::null()) reads EOF at once, and a TTY means a human.
try {
  const st = fs.fstatSync(0);
  if (st.isFIFO() || st.isSocket()) {
    process.stdin.on('end', shutdown);
    process.stdin.on('close', shutdown);
    process.stdin.on('error', shutdown);
    process.stdin.resume(); // discard whatever is written
  }
} catch {
  // no stdin at all
}

process.stdout.write(`${JSON.stringify({ ready: true, issuer })}\n`);
