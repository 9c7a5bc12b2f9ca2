/**
 * Errors by API code. Every error the service answers carries a stable
 * `error` code, a human `message` and the `request_id` to find it in the
 * service's logs; the classes let callers branch without string matching.
 */

/** The JSON body of every error response. */
export interface ErrorBody {
  error: string;
  message: string;
  request_id: string;
}

/** Base class: any error answered by the service (or the transport). */
export class TokenvaultError extends Error {
  override readonly name: string = "TokenvaultError";
  /** The HTTP status (0 when no answer arrived). */
  readonly status: number;
  /** The API's stable error code (`needs_reauth`, `connection_not_found`, …). */
  readonly code: string;
  /** The request's id, as logged by the service. */
  readonly requestId: string | undefined;
  /** Seconds the service asked to wait before retrying (`Retry-After`). */
  readonly retryAfter: number | undefined;

  constructor(
    message: string,
    init: { status: number; code: string; requestId?: string | undefined; retryAfter?: number | undefined },
  ) {
    super(message);
    this.status = init.status;
    this.code = init.code;
    this.requestId = init.requestId;
    this.retryAfter = init.retryAfter;
  }
}

/** 400: the request was malformed (`invalid_user_id`, `invalid_scopes`, …). */
export class ValidationError extends TokenvaultError {
  override readonly name = "ValidationError";
}

/** 401: missing, unknown or revoked API key. */
export class UnauthorizedError extends TokenvaultError {
  override readonly name = "UnauthorizedError";
}

/** 403: the key's scope does not cover the operation. */
export class ForbiddenError extends TokenvaultError {
  override readonly name = "ForbiddenError";
}

/** 404 `connection_not_found`: the user has not connected (or disconnected). */
export class NotConnectedError extends TokenvaultError {
  override readonly name = "NotConnectedError";
}

/** Any other 404 (`unknown_integration`, `bulk_action_not_found`, …). */
export class NotFoundError extends TokenvaultError {
  override readonly name = "NotFoundError";
}

/** 409 `needs_reauth`: the grant was revoked or expired; show a reconnect button. */
export class NeedsReauthError extends TokenvaultError {
  override readonly name = "NeedsReauthError";
}

/** Any other 409 (`bulk_action_finished`, `stored_tokens_newer`). */
export class ConflictError extends TokenvaultError {
  override readonly name = "ConflictError";
}

/** 502: the provider failed (`provider_error`, `provider_unreachable`, …). */
export class ProviderError extends TokenvaultError {
  override readonly name = "ProviderError";
}

/**
 * 503 `provider_unavailable`: the token expired and the provider cannot
 * refresh it now; `retryAfter` says when to try again.
 */
export class ProviderUnavailableError extends TokenvaultError {
  override readonly name = "ProviderUnavailableError";
}

/** 503 `integration_misconfigured`: the provider rejects the integration's client credentials. */
export class IntegrationMisconfiguredError extends TokenvaultError {
  override readonly name = "IntegrationMisconfiguredError";
}

/** Any other 503 (`database_unavailable`, `request_timeout`, `integration_unavailable`, …). */
export class ServiceUnavailableError extends TokenvaultError {
  override readonly name = "ServiceUnavailableError";
}

/** No answer: the connection failed or the request timed out. */
export class TransportError extends TokenvaultError {
  override readonly name = "TransportError";
}

type ErrorClass = new (
  message: string,
  init: { status: number; code: string; requestId?: string | undefined; retryAfter?: number | undefined },
) => TokenvaultError;

const BY_CODE: Record<string, ErrorClass> = {
  connection_not_found: NotConnectedError,
  needs_reauth: NeedsReauthError,
  provider_unavailable: ProviderUnavailableError,
  integration_misconfigured: IntegrationMisconfiguredError,
};

const BY_STATUS: Record<number, ErrorClass> = {
  400: ValidationError,
  401: UnauthorizedError,
  403: ForbiddenError,
  404: NotFoundError,
  409: ConflictError,
  502: ProviderError,
  503: ServiceUnavailableError,
};

/** The error for an answer with a non-2xx status. */
export function errorFor(
  status: number,
  body: Partial<ErrorBody> | undefined,
  retryAfter: number | undefined,
): TokenvaultError {
  const code = typeof body?.error === "string" ? body.error : `http_${status}`;
  const message = typeof body?.message === "string" ? body.message : `HTTP ${status}`;
  const Class = BY_CODE[code] ?? BY_STATUS[status] ?? TokenvaultError;
  return new Class(message, { status, code, requestId: body?.request_id, retryAfter });
}
