//! Client authentication at the provider's endpoints: the method, the
//! credentials, and how they go into a request.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{self, HeaderValue};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use super::error::OAuthError;
use crate::privacy::Scrubber;

/// How the client authenticates at the token/revocation/device endpoints
/// (RFC 6749 §2.3, OIDC `token_endpoint_auth_method` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with form-urlencoded id and secret (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// Public client: `client_id` in the body, no secret ever sent.
    None,
}

impl ClientAuthMethod {
    /// The RFC 8414 / OIDC Discovery name of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::None => "none",
        }
    }

    /// Whether the method needs a client secret.
    pub fn is_confidential(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// Client credentials. `Debug` never prints the secret.
#[derive(Clone)]
pub struct ClientAuth {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub method: ClientAuthMethod,
}

impl ClientAuth {
    pub fn basic(client_id: impl Into<String>, client_secret: SecretString) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: Some(client_secret),
            method: ClientAuthMethod::ClientSecretBasic,
        }
    }

    pub fn post(client_id: impl Into<String>, client_secret: SecretString) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: Some(client_secret),
            method: ClientAuthMethod::ClientSecretPost,
        }
    }

    /// A public client (PKCE / device flow without a secret).
    pub fn public(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: None,
            method: ClientAuthMethod::None,
        }
    }

    /// The `Authorization` header value for `client_secret_basic`:
    /// `Basic base64(urlencode(id) ":" urlencode(secret))`.
    fn basic_header(&self, secret: &SecretString) -> Result<HeaderValue, OAuthError> {
        let id = form_urlencode(&self.client_id);
        let secret = form_urlencode(secret.expose_secret());
        let encoded = STANDARD.encode(format!("{id}:{secret}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| OAuthError::Config("unencodable basic credentials".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The `Authorization` header value for `client_secret_basic`; errors when
    /// there is no secret, whatever the configured method.
    pub(super) fn require_basic_header(&self) -> Result<HeaderValue, OAuthError> {
        let secret = self.client_secret.as_ref().ok_or_else(|| {
            OAuthError::Config("HTTP Basic client authentication requires a client_secret".into())
        })?;
        self.basic_header(secret)
    }

    /// Adds the client secret, as sent (in the body or in a Basic header),
    /// to `secrets`.
    pub(super) fn add_secrets(&self, secrets: &mut Scrubber) {
        if let Some(secret) = &self.client_secret {
            secrets.add(secret.expose_secret());
            if let Ok(basic) = self.basic_header(secret)
                && let Ok(value) = basic.to_str()
            {
                secrets.add(value.trim_start_matches("Basic "));
            }
        }
    }

    /// Adds client authentication to a request: either a header or body params.
    pub(super) fn apply(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Vec<(&'static str, String)>,
    ) -> Result<reqwest::RequestBuilder, OAuthError> {
        let secret = || {
            self.client_secret.as_ref().ok_or_else(|| {
                OAuthError::Config(format!(
                    "client auth method {:?} requires a client_secret",
                    self.method
                ))
            })
        };
        match self.method {
            ClientAuthMethod::ClientSecretBasic => {
                let value = self.basic_header(secret()?)?;
                Ok(req.header(header::AUTHORIZATION, value))
            }
            ClientAuthMethod::ClientSecretPost => {
                let secret = secret()?;
                form.push(("client_id", self.client_id.clone()));
                form.push(("client_secret", secret.expose_secret().to_string()));
                Ok(req)
            }
            ClientAuthMethod::None => {
                form.push(("client_id", self.client_id.clone()));
                Ok(req)
            }
        }
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("method", &self.method)
            .finish()
    }
}

fn form_urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
