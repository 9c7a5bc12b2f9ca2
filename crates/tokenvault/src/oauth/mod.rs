//! OAuth 2.0 protocol client.
//!
//! This module only speaks the protocol (RFC 6749, 6750, 7009, 7636, 8628,
//! 9207) and the common provider deviations; it depends on no other tokenvault
//! module. Provider-specific knobs (scope separator, token path, extra
//! parameters, client auth method) are passed in by the caller.
//!
//! Secrets are carried as [`secrecy::SecretString`]; no `Debug` or `Display`
//! output of this module contains a token or client secret.

mod authorize;
mod client;
mod client_auth;
mod error;
mod pkce;
mod token;

#[cfg(test)]
mod tests;

pub use authorize::{AuthorizeRequest, IssuerMismatch, build_authorize_url, check_callback_issuer};
pub use client::{OAuthClient, OAuthClientConfig, TokenRequestFormat, TokenRequestOptions};
pub use client_auth::{ClientAuth, ClientAuthMethod};
pub use error::{OAuthError, RetryAfter};
pub use pkce::{PKCE_METHOD_S256, Pkce, random_state, s256_challenge};
pub use token::{
    DEFAULT_DEVICE_CODE_EXPIRES_IN, DEFAULT_DEVICE_POLL_INTERVAL, DeviceAuthorization, DevicePoll,
    TokenResponse, parse_scope_string, parse_token_response,
};
