export { Tokenvault } from "./client.js";
export type * from "./client.js";
export { AccessToken } from "./token.js";
export * from "./errors.js";
export { verifyWebhook, WebhookSignatureError, SIGNATURE_HEADER } from "./webhook.js";
export type { SignatureFailure, VerifyOptions } from "./webhook.js";
export { VERSION } from "./version.js";
