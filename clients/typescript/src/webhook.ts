/**
 * Webhook signatures: `Tokenvault-Signature: t=<unix seconds>,v1=<hex>`
 * where hex is HMAC-SHA256(secret, "<t>.<raw body>"). Several `v1` may be
 * listed while a secret is being rotated; any one matching is enough.
 * Uses Web Crypto only, so it runs in Node ≥ 20, Deno, Bun and edge runtimes.
 */

/** The name of the header that carries the signature. */
export const SIGNATURE_HEADER = "Tokenvault-Signature";

/** Why a signature was refused. */
export type SignatureFailure = "malformed" | "stale" | "mismatch";

export class WebhookSignatureError extends Error {
  override readonly name = "WebhookSignatureError";
  readonly reason: SignatureFailure;

  constructor(reason: SignatureFailure) {
    super(
      {
        malformed: "the signature header is malformed (needs t=<unix seconds> and at least one v1=<hex>)",
        stale: "the signature's timestamp is outside the tolerance (a replay, or a clock far off)",
        mismatch: "no signature matches the body and secret",
      }[reason],
    );
    this.reason = reason;
  }
}

export interface VerifyOptions {
  /** How far the timestamp may be from now, in seconds (default 300). */
  toleranceSeconds?: number;
  /** The current time in Unix seconds (default: the system clock). */
  now?: number;
}

const encoder = new TextEncoder();

function hexToBytes(hex: string): Uint8Array<ArrayBuffer> | undefined {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) return undefined;
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    bytes[i] = Number.parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  }
  return bytes;
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Checks the signature header against the raw request body (the exact
 * bytes received, before any JSON parsing). Resolves when it is valid;
 * rejects with a {@link WebhookSignatureError} saying why not. Comparison
 * is constant-time (Web Crypto's HMAC verify).
 */
export async function verifyWebhook(
  rawBody: string | Uint8Array,
  signatureHeader: string | null | undefined,
  secret: string,
  options: VerifyOptions = {},
): Promise<void> {
  let timestamp: number | undefined;
  const signatures: Uint8Array<ArrayBuffer>[] = [];
  for (const raw of (signatureHeader ?? "").split(",")) {
    const part = raw.trim();
    const at = part.indexOf("=");
    if (at < 0) continue;
    const key = part.slice(0, at);
    const value = part.slice(at + 1);
    if (key === "t") {
      timestamp = /^[+-]?\d+$/.test(value) ? Number(value) : undefined;
    } else if (key === "v1") {
      const bytes = hexToBytes(value);
      if (!bytes) throw new WebhookSignatureError("malformed");
      signatures.push(bytes);
    }
  }
  if (timestamp === undefined || signatures.length === 0) {
    throw new WebhookSignatureError("malformed");
  }
  const now = options.now ?? Math.floor(Date.now() / 1000);
  if (Math.abs(now - timestamp) > (options.toleranceSeconds ?? 300)) {
    throw new WebhookSignatureError("stale");
  }
  const body = typeof rawBody === "string" ? encoder.encode(rawBody) : rawBody;
  const key = await crypto.subtle.importKey(
    "raw",
    encoder.encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["verify"],
  );
  const signed = concat(encoder.encode(`${timestamp}.`), body);
  for (const signature of signatures) {
    if (await crypto.subtle.verify("HMAC", key, signature, signed)) return;
  }
  throw new WebhookSignatureError("mismatch");
}
