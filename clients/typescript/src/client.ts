/**
 * The tokenvault client: the whole `/v1` API with typed bodies (generated
 * from the service's OpenAPI document into `generated/api.ts`), plus what
 * makes the common path pleasant: `getToken`, paging as async iterators,
 * errors as classes, 503 retries that honour `Retry-After`, timeouts.
 */

import type { components } from "./generated/api.js";
import { TransportError, errorFor, type ErrorBody } from "./errors.js";
import { AccessToken } from "./token.js";
import { VERSION } from "./version.js";

export type Schemas = components["schemas"];
export type Connection = Schemas["ConnectionView"];
export type ListedConnection = Schemas["ListedConnection"];
export type ConnectionEvent = Schemas["ConnectionEvent"];
export type ConnectionSummary = Schemas["ConnectionSummary"];
export type ConnectionStatus = Schemas["ConnectionStatus"];
export type ConnectSession = Schemas["ConnectSessionCreated"];
export type DeviceSession = Schemas["DeviceSessionCreated"];
export type DeviceSessionView = Schemas["DeviceSessionView"];
export type Revocation = Schemas["Revocation"];
export type RefreshedConnection = Schemas["RefreshedConnection"];
export type BulkAction = Schemas["BulkActionView"];
export type BulkItem = Schemas["ItemBody"];
export type BulkItemState = Schemas["ItemState"];
export type Integration = Schemas["IntegrationView"];
export type Provider = Schemas["ProviderEntry"];
export type Profile = Schemas["ProfileBody"];

export interface ClientOptions {
  /** Where tokenvault listens, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** An API key (`tokenvault api-keys create`). */
  apiKey: string;
  /** Per-request timeout in milliseconds (default 30 000). */
  timeoutMs?: number;
  /**
   * How many times a `503` with `Retry-After` is retried after waiting
   * (default 2; 0 turns retries off). Waits longer than `maxRetryWaitMs`
   * are not waited out: the error is thrown.
   */
  maxRetries?: number;
  /** The longest `Retry-After` waited out, in milliseconds (default 10 000). */
  maxRetryWaitMs?: number;
  /** A `fetch` to use instead of the global one (tests, proxies). */
  fetch?: typeof fetch;
  /** Appended to the `User-Agent` (Node only; browsers set their own). */
  userAgent?: string;
}

export interface ConnectSessionOptions {
  /** Scopes instead of the integration's defaults. */
  scopes?: string[] | string;
  /** Where the browser goes afterwards (an allowed origin). */
  redirectTo?: string;
  /** Provider-specific authorization parameters. */
  providerParams?: Record<string, string>;
  /**
   * Values of the provider's connection parameters that come from the app
   * (`source: "session"` in `getProvider`), e.g. `{ shop: "acme" }` for
   * Shopify; each is checked against the catalog entry's pattern.
   */
  connectionParams?: Record<string, string>;
  /** Confirm mode: the app confirms the connection for the user. */
  confirm?: boolean;
  /**
   * `page`: the link shows the Connect UI page (the app, the integration,
   * the access asked for) before the provider; `direct`: straight to the
   * provider. Default: the service's `connect_ui` setting.
   */
  connectUi?: "direct" | "page";
  /**
   * Renew the user's existing connection (after `needs_reauth`): the page
   * says "reconnect" and the flow keeps the connection's id. Rejects with
   * `NotConnectedError` when there is none.
   */
  reconnect?: boolean;
}

export interface ListOptions {
  status?: ConnectionStatus;
  integration?: string;
  userIdPrefix?: string;
  /** Page size (1–1000, default 100). */
  pageSize?: number;
}

export interface ProxyRequest {
  method?: "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS";
  /** The API path below the integration's `api_base_url`, e.g. `me/tracks`. */
  path: string;
  query?: Record<string, string | number | boolean>;
  /** A string or bytes are sent as is; anything else as JSON. */
  body?: unknown;
  headers?: Record<string, string>;
}

/** The provider's answer, relayed: status, headers, and the body as a stream. */
export interface ProxyResponse {
  status: number;
  headers: Headers;
  body: ReadableStream<Uint8Array> | null;
  /** The whole body as text (reads the stream). */
  text(): Promise<string>;
  /** The whole body parsed as JSON (reads the stream). */
  json<T = unknown>(): Promise<T>;
}

interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined> | undefined;
  body?: unknown;
  headers?: Record<string, string> | undefined;
  /** Accepts the response as is, whatever its status (the proxy). */
  raw?: boolean;
}

/** Set by tokenvault on every error it answers itself. */
const ERROR_HEADER = "tokenvault-error";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function segment(value: string): string {
  return encodeURIComponent(value);
}

export class Tokenvault {
  readonly #baseUrl: string;
  readonly #apiKey: string;
  readonly #timeoutMs: number;
  readonly #maxRetries: number;
  readonly #maxRetryWaitMs: number;
  readonly #fetch: typeof fetch;
  readonly #userAgent: string;

  constructor(options: ClientOptions) {
    if (!options.baseUrl) throw new TypeError("baseUrl is required");
    if (!options.apiKey) throw new TypeError("apiKey is required");
    this.#baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.#apiKey = options.apiKey;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.#maxRetries = options.maxRetries ?? 2;
    this.#maxRetryWaitMs = options.maxRetryWaitMs ?? 10_000;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#userAgent = `tokenvault-js/${VERSION}${options.userAgent ? ` ${options.userAgent}` : ""}`;
  }

  /** The key never appears in logs. */
  toString(): string {
    return `Tokenvault(${this.#baseUrl})`;
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }

  // ----- tokens ------------------------------------------------------------

  /**
   * A valid access token for the user's connection, refreshed first when it
   * would expire within `minTtl` seconds (default 60).
   * @throws NotConnectedError, NeedsReauthError, ProviderUnavailableError, …
   */
  async getToken(
    userId: string,
    integration: string,
    options: { minTtl?: number } = {},
  ): Promise<AccessToken> {
    const body = await this.#json<Schemas["AccessTokenBody"]>(
      "GET",
      `/v1/users/${segment(userId)}/connections/${segment(integration)}/token`,
      { query: { min_ttl: options.minTtl } },
    );
    return new AccessToken({
      accessToken: body.access_token,
      tokenType: body.token_type,
      expiresAt: body.expires_at ? new Date(body.expires_at) : null,
      scopes: body.scopes,
    });
  }

  /** An app-level (client credentials) token of an integration. */
  async getAppToken(integration: string): Promise<AccessToken> {
    const body = await this.#json<Schemas["AccessTokenBody"]>(
      "GET",
      `/v1/integrations/${segment(integration)}/token`,
    );
    return new AccessToken({
      accessToken: body.access_token,
      tokenType: body.token_type,
      expiresAt: body.expires_at ? new Date(body.expires_at) : null,
      scopes: body.scopes,
    });
  }

  // ----- connecting --------------------------------------------------------

  /**
   * Starts a connect session: send the user to its `connect_url`. Several
   * integrations make a picker: the page lets the user choose one.
   */
  async createConnectSession(
    userId: string,
    integration: string | string[],
    options: ConnectSessionOptions = {},
  ): Promise<ConnectSession> {
    const which = Array.isArray(integration) ? { integrations: integration } : { integration };
    return this.#json<ConnectSession>("POST", "/v1/connect-sessions", {
      body: {
        user_id: userId,
        ...which,
        connect_ui: options.connectUi,
        scopes: options.scopes,
        redirect_to: options.redirectTo,
        provider_params: options.providerParams,
        connection_params: options.connectionParams,
        confirm: options.confirm,
        reconnect: options.reconnect,
      },
    });
  }

  /** Confirm mode: attaches the flow's code to the user. */
  async confirmConnectSession(
    sessionId: string,
    confirmCode: string,
    userId: string,
  ): Promise<Schemas["ConfirmedConnection"]> {
    return this.#json("POST", `/v1/connect-sessions/${segment(sessionId)}/confirm`, {
      body: { confirm_code: confirmCode, user_id: userId },
    });
  }

  /** Starts a device authorization session (RFC 8628). */
  async createDeviceSession(
    userId: string,
    integration: string,
    options: { scopes?: string[] | string } = {},
  ): Promise<DeviceSession> {
    return this.#json("POST", "/v1/device-sessions", {
      body: { user_id: userId, integration, scopes: options.scopes },
    });
  }

  async getDeviceSession(sessionId: string): Promise<DeviceSessionView> {
    return this.#json("GET", `/v1/device-sessions/${segment(sessionId)}`);
  }

  // ----- connections -------------------------------------------------------

  /** One connection's status document (no token material). */
  async getConnection(userId: string, integration: string): Promise<Connection> {
    return this.#json(
      "GET",
      `/v1/users/${segment(userId)}/connections/${segment(integration)}`,
    );
  }

  /** Every connection of one user. */
  async listUserConnections(userId: string): Promise<Schemas["ConnectionList"]> {
    return this.#json("GET", `/v1/users/${segment(userId)}/connections`);
  }

  /** Connections across users, every page: `for await (const c of tv.listConnections({status: "needs_reauth"}))`. */
  async *listConnections(options: ListOptions = {}): AsyncGenerator<ListedConnection> {
    let after: string | undefined;
    do {
      const page = await this.#json<Schemas["ConnectionPage"]>("GET", "/v1/connections", {
        query: {
          status: options.status,
          integration: options.integration,
          user_id_prefix: options.userIdPrefix,
          limit: options.pageSize,
          after,
        },
      });
      yield* page.connections;
      after = page.next_cursor ?? undefined;
    } while (after);
  }

  /** Counts by integration and status, failing and due within the hour. */
  async connectionSummary(): Promise<ConnectionSummary> {
    return this.#json("GET", "/v1/connections/summary");
  }

  /** The connection's history, newest first, every page. */
  async *connectionEvents(
    userId: string,
    integration: string,
    options: { pageSize?: number } = {},
  ): AsyncGenerator<ConnectionEvent> {
    let after: string | undefined;
    do {
      const page = await this.#json<Schemas["ConnectionEventPage"]>(
        "GET",
        `/v1/users/${segment(userId)}/connections/${segment(integration)}/events`,
        { query: { limit: options.pageSize, after } },
      );
      yield* page.events;
      after = page.next_cursor ?? undefined;
    } while (after);
  }

  /** Refreshes now (once across all instances). */
  async refreshConnection(userId: string, integration: string): Promise<RefreshedConnection> {
    return this.#json(
      "POST",
      `/v1/users/${segment(userId)}/connections/${segment(integration)}/refresh`,
      { body: {} },
    );
  }

  /** Revokes at the provider and erases the tokens. */
  async revokeConnection(userId: string, integration: string): Promise<Revocation> {
    return this.#json(
      "DELETE",
      `/v1/users/${segment(userId)}/connections/${segment(integration)}`,
    );
  }

  /** The user's profile at the provider (id, email, display name). */
  async getProfile(userId: string, integration: string): Promise<Profile> {
    return this.#json(
      "GET",
      `/v1/users/${segment(userId)}/connections/${segment(integration)}/profile`,
    );
  }

  // ----- the provider's API ------------------------------------------------

  /**
   * Calls the provider's API as the user; tokenvault adds a valid token.
   * The provider's status, headers and body come back as they are (a
   * provider 404 is not an error here); tokenvault's own refusals throw.
   */
  async proxy(userId: string, integration: string, request: ProxyRequest): Promise<ProxyResponse> {
    const path = request.path.replace(/^\/+/, "");
    const response = await this.#send(
      request.method ?? "GET",
      `/v1/proxy/${segment(integration)}/${segment(userId)}/${path}`,
      { query: request.query, body: request.body, headers: request.headers, raw: true },
    );
    return {
      status: response.status,
      headers: response.headers,
      body: response.body,
      text: () => response.text(),
      json: <T>() => response.json() as Promise<T>,
    };
  }

  // ----- bulk actions ------------------------------------------------------

  /** Creates a bulk action (one provider request per user); runs in the background. */
  async createBulkAction(spec: Schemas["BulkSpecInput"]): Promise<BulkAction> {
    return this.#json("POST", "/v1/bulk-actions", { body: spec });
  }

  async getBulkAction(id: string): Promise<BulkAction> {
    return this.#json("GET", `/v1/bulk-actions/${segment(id)}`);
  }

  async cancelBulkAction(id: string): Promise<BulkAction> {
    return this.#json("POST", `/v1/bulk-actions/${segment(id)}/cancel`, { body: {} });
  }

  /** Polls the action's progress until it completes or is cancelled. */
  async *bulkActionProgress(
    id: string,
    options: { intervalMs?: number } = {},
  ): AsyncGenerator<BulkAction> {
    for (;;) {
      const action = await this.getBulkAction(id);
      yield action;
      if (action.state === "completed" || action.state === "cancelled") return;
      await sleep(options.intervalMs ?? 1_000);
    }
  }

  /** The action's items (e.g. `{state: "failed"}`), every page, in order. */
  async *bulkActionItems(
    id: string,
    options: { state?: BulkItemState; pageSize?: number } = {},
  ): AsyncGenerator<BulkItem> {
    let after: number | undefined;
    do {
      const page = await this.#json<Schemas["ItemPage"]>(
        "GET",
        `/v1/bulk-actions/${segment(id)}/items`,
        { query: { state: options.state, limit: options.pageSize, after } },
      );
      yield* page.items;
      after = page.next_after ?? undefined;
    } while (after !== undefined);
  }

  // ----- integrations ------------------------------------------------------

  async listIntegrations(): Promise<Integration[]> {
    return (await this.#json<Schemas["IntegrationList"]>("GET", "/v1/integrations")).integrations;
  }

  async listProviders(): Promise<Provider[]> {
    return (await this.#json<Schemas["ProviderList"]>("GET", "/v1/providers")).providers;
  }

  /** One catalog entry in full (`NotFoundError` with code `unknown_provider` when there is none). */
  async getProvider(key: string): Promise<Schemas["ProviderDetail"]> {
    return this.#json("GET", `/v1/providers/${segment(key)}`);
  }

  async resetIntegration(integration: string): Promise<Schemas["IntegrationReset"]> {
    return this.#json("POST", `/v1/integrations/${segment(integration)}/reset`, { body: {} });
  }

  /** Imports a grant from another system (admin scope). */
  async importConnection(
    userId: string,
    integration: string,
    grant: Schemas["ImportBody"],
    options: { force?: boolean } = {},
  ): Promise<Schemas["ImportedConnection"]> {
    return this.#json(
      "PUT",
      `/v1/users/${segment(userId)}/connections/${segment(integration)}`,
      { body: grant, query: { force: options.force } },
    );
  }

  /** Checks the API key. */
  async ping(): Promise<Schemas["Pong"]> {
    return this.#json("GET", "/v1/ping");
  }

  // ----- transport ---------------------------------------------------------

  async #json<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.#send(method, path, options);
    return (await response.json()) as T;
  }

  /** Sends with the key, a timeout and bounded 503 retries; non-2xx throw unless `raw`. */
  async #send(method: string, path: string, options: RequestOptions): Promise<Response> {
    const url = new URL(this.#baseUrl + path);
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = {
      ...Object.fromEntries(
        Object.entries(options.headers ?? {}).map(([name, value]) => [name.toLowerCase(), value]),
      ),
      authorization: `Bearer ${this.#apiKey}`,
      "user-agent": this.#userAgent,
      accept: options.raw ? "*/*" : "application/json",
    };
    let body: BodyInit | undefined;
    if (options.body !== undefined) {
      if (typeof options.body === "string" || options.body instanceof Uint8Array) {
        body = options.body as BodyInit;
      } else {
        body = JSON.stringify(options.body);
        headers["content-type"] ??= "application/json";
      }
    }
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      // A timer of our own (AbortSignal.timeout's does not keep the
      // process alive while the request is pending).
      const controller = new AbortController();
      const timer = setTimeout(
        () => controller.abort(new DOMException("timed out", "TimeoutError")),
        this.#timeoutMs,
      );
      try {
        response = await this.#fetch(url, {
          method,
          headers,
          body: body ?? null,
          signal: controller.signal,
          redirect: "manual",
        });
      } catch (cause) {
        const timedOut = cause instanceof Error && cause.name === "TimeoutError";
        throw new TransportError(
          timedOut
            ? `${method} ${path}: no answer within ${this.#timeoutMs} ms`
            : `${method} ${path}: ${cause instanceof Error ? cause.message : String(cause)}`,
          { status: 0, code: timedOut ? "timeout" : "connection_failed" },
        );
      } finally {
        clearTimeout(timer);
      }
      const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
      // Through the proxy, only tokenvault's own refusals carry this header
      // (it never relays a provider's): anything else is the provider's.
      const ours = !options.raw || response.headers.has(ERROR_HEADER);
      if (response.status === 503 && ours && retryAfter !== undefined
          && attempt < this.#maxRetries && retryAfter * 1000 <= this.#maxRetryWaitMs) {
        await response.body?.cancel();
        await sleep(retryAfter * 1000);
        continue;
      }
      if (response.ok || !ours) return response;
      let parsed: Partial<ErrorBody> | undefined;
      try {
        parsed = (await response.json()) as Partial<ErrorBody>;
      } catch {
        parsed = undefined;
      }
      throw errorFor(response.status, parsed, retryAfter);
    }
  }
}

function parseRetryAfter(header: string | null): number | undefined {
  if (header === null || !/^\d+$/.test(header.trim())) return undefined;
  return Number(header.trim());
}
