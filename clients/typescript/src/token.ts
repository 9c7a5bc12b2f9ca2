/**
 * A usable access token. The secret is reachable only through
 * `accessToken`: printing, logging or `JSON.stringify` of the object shows
 * it masked, so a token cannot leak through a log line by accident.
 */

const MASK = "********";

export class AccessToken {
  readonly #accessToken: string;
  /** `Bearer` (or `MAC`). */
  readonly tokenType: string;
  /** When it expires; null when the provider did not say. */
  readonly expiresAt: Date | null;
  readonly scopes: readonly string[];

  constructor(init: {
    accessToken: string;
    tokenType: string;
    expiresAt: Date | null;
    scopes: readonly string[];
  }) {
    this.#accessToken = init.accessToken;
    this.tokenType = init.tokenType;
    this.expiresAt = init.expiresAt;
    this.scopes = init.scopes;
  }

  /** The token in the clear, for the provider's API. */
  get accessToken(): string {
    return this.#accessToken;
  }

  /** `Authorization` header value for the provider's API. */
  authorization(): string {
    return `${this.tokenType} ${this.#accessToken}`;
  }

  toString(): string {
    return `AccessToken(${MASK}, expires ${this.expiresAt?.toISOString() ?? "never"})`;
  }

  toJSON(): Record<string, unknown> {
    return {
      accessToken: MASK,
      tokenType: this.tokenType,
      expiresAt: this.expiresAt,
      scopes: this.scopes,
    };
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }
}
