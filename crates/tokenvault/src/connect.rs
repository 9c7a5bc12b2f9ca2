//! The browser authorization-code flow as a service, beside the device flow
//! ([`crate::device`]): a connect session, the redirect to the provider
//! (one-time state, PKCE, a browser binding), the callback's checks, the
//! code exchange and the save, or, in confirm mode, the code held until the
//! application confirms it for its logged-in user.
//!
//! HTTP is the caller's: it turns [`Started`] into a redirect and a cookie,
//! reads the callback's query into a [`Callback`], and maps
//! [`ConnectError`] onto its answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::domain::{IntegrationKey, Scopes, UserId};
use crate::integrations::Integration;
use crate::oauth::Pkce;
use crate::oauth_state::{FlowOutcome, FlowStatus, StateError, StateKey, StateRecord, StateStore};
use crate::vault::{Vault, VaultError};

/// Why a flow step ended without what it was for.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connect link or the callback's state is unknown, expired or was
    /// already used (each is single-use).
    #[error("{0}")]
    InvalidState(&'static str),
    /// The callback arrived on another integration's callback URL.
    #[error("this state was issued for integration `{issued}`, not `{expected}`")]
    StateMismatch {
        issued: IntegrationKey,
        expected: String,
    },
    #[error("no integration named {0:?} is configured; see GET /v1/integrations")]
    UnknownIntegration(String),
    /// Configured, but its provider's OIDC discovery has not succeeded yet
    /// (retried in the background).
    #[error(
        "integration `{integration}` is unavailable: its OIDC discovery failed ({error}); it is retried in the background"
    )]
    IntegrationUnavailable {
        integration: IntegrationKey,
        error: String,
    },
    #[error(transparent)]
    StateStore(#[from] StateError),
    /// The provider answered the authorization request with an error
    /// (`denied` when the user refused consent).
    #[error("the provider answered {provider_code}: {description}")]
    Provider {
        denied: bool,
        /// The provider's `error` value, reduced to `[A-Za-z0-9_]`, at most
        /// 64 characters.
        provider_code: String,
        description: String,
    },
    #[error("the callback's iss parameter does not match the provider: {0}")]
    IssuerMismatch(String),
    #[error("the callback has neither code nor error")]
    MissingCode,
    #[error("exchanging the authorization code failed: {0}")]
    Exchange(String),
    /// The grant could not be stored; it was revoked at the provider (when
    /// the provider can revoke).
    #[error("storing the connection failed: {0}")]
    Save(#[source] VaultError),
    /// The integration chosen on a connect page is not one the session offers.
    #[error("this connect link does not offer integration {0:?}")]
    NotOffered(String),
    /// Confirm mode needs somewhere to send the confirmation code.
    #[error("confirm mode needs redirect_to: the confirmation code is sent there")]
    ConfirmWithoutRedirect,
    #[error("unknown, expired or already used confirmation code for this connect session")]
    ConfirmationNotFound,
    /// The application confirmed the flow for another user than the one it
    /// was started for; the code is discarded, never exchanged.
    #[error(
        "this flow was started for another user; it is discarded. Start a new connect session for the logged-in user"
    )]
    UserMismatch,
    /// A reconnect session for a pair that has no connection to renew.
    #[error(
        "user has no connection to integration `{0}` to reconnect; create a connect session without reconnect"
    )]
    NothingToReconnect(IntegrationKey),
    /// A reconnect renews one connection: it cannot offer a picker.
    #[error("a reconnect session renews one connection: give integration, not integrations")]
    ReconnectPicker,
    /// The session's `connection_params` are refused (unknown, missing or
    /// invalid); nothing is stored.
    #[error("{0}")]
    SessionParams(crate::providers::ParamError),
    /// A connection parameter read from the provider (the callback, the
    /// token response, the post-connect call) is missing or invalid: the
    /// grant is not stored (and is revoked where the provider can).
    #[error("the provider's answer is unusable: {0}")]
    ProviderParams(crate::providers::ParamError),
}

/// How long the outcome of a flow stays readable by its result page (a
/// reload, the user coming back to the tab).
pub const OUTCOME_TTL: Duration = Duration::from_secs(3600);

/// What a new connect session asks for.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub user_id: UserId,
    /// The integration to connect; with `offered`, the first of them.
    pub integration: IntegrationKey,
    /// More than one: the connect page lets the user pick (`integration`
    /// must be among them).
    pub offered: Vec<IntegrationKey>,
    /// The link shows a page (what is asked, a button) before the provider.
    pub show_page: bool,
    /// Renews the user's existing connection to `integration` (which must
    /// exist; no picker): same connection id, `connection.reconnected`.
    pub reconnect: bool,
    /// Empty: the integration's default scopes.
    pub scopes: Scopes,
    /// Where the browser goes when the flow ends (already checked against
    /// the allowed origins by the caller).
    pub redirect_to: Option<String>,
    /// Extra authorization parameters the provider takes from the app.
    pub provider_params: BTreeMap<String, String>,
    /// Values of the provider's `session` connection parameters (Shopify's
    /// `shop`), checked by [`ConnectFlow::create_session`]. A reconnect
    /// without them keeps the connection's own.
    pub connection_params: BTreeMap<String, String>,
    /// Hold the code until the application confirms the flow.
    pub confirm: bool,
}

/// A created connect session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The single-use id of the connect link.
    pub id: StateKey,
    pub expires_at: DateTime<Utc>,
}

/// A connect link opened: send the browser to `authorize_url`, and when
/// `browser_nonce` is set, give it that nonce in a cookie the callback
/// must bring back ([`ConnectFlow::bound_to_browser`]).
#[derive(Debug)]
pub struct Started {
    pub integration: Arc<Integration>,
    /// The OAuth `state` of this authorization request.
    pub state: StateKey,
    pub authorize_url: Url,
    pub browser_nonce: Option<StateKey>,
}

/// The callback's query parameters.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Callback {
    /// Every query parameter, for the provider's `callback` connection
    /// parameters (QuickBooks' `realmId`).
    #[serde(flatten)]
    pub query: BTreeMap<String, String>,
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
    /// Wix names the installed site instance on its callback.
    #[serde(rename = "instanceId")]
    pub instance_id: Option<String>,
}

/// What a connect link leads to now.
#[derive(Debug)]
pub enum Lookup {
    /// Not opened yet: the session as created.
    Pending(Box<StateRecord>),
    /// Opened: how its flow went so far.
    Opened(FlowOutcome),
    /// Unknown or expired.
    Unknown,
}

/// How a callback ended.
#[derive(Debug)]
pub enum Finished {
    /// The connection is stored under this id.
    Connected { connection_id: String },
    /// Confirm mode: the code is held under `confirmation` until the
    /// application confirms; send the browser to `redirect_to`.
    AwaitingConfirmation { confirmation: StateKey },
}

/// The flow's service. Cheap to clone.
#[derive(Clone)]
pub struct ConnectFlow {
    vault: Vault,
    states: Arc<dyn StateStore>,
    state_ttl: Duration,
}

impl ConnectFlow {
    /// Sessions and states live `state_ttl` in `states`; grants are stored
    /// through `vault`, whose integrations are the ones offered.
    pub fn new(vault: Vault, states: Arc<dyn StateStore>, state_ttl: Duration) -> Self {
        Self {
            vault,
            states,
            state_ttl,
        }
    }

    pub fn state_ttl(&self) -> Duration {
        self.state_ttl
    }

    /// The configured integration named `raw`.
    /// An integration whose discovery has not succeeded yet is
    /// [`ConnectError::IntegrationUnavailable`].
    pub fn integration(&self, raw: &str) -> Result<Arc<Integration>, ConnectError> {
        let key = IntegrationKey::parse(raw)
            .map_err(|_| ConnectError::UnknownIntegration(raw.to_owned()))?;
        if let Some(integration) = self.vault.integrations().get(&key) {
            return Ok(integration);
        }
        match self
            .vault
            .integrations()
            .unavailable()
            .into_iter()
            .find(|pending| pending.key == key)
        {
            Some(pending) => Err(ConnectError::IntegrationUnavailable {
                integration: key,
                error: pending.error,
            }),
            None => Err(ConnectError::UnknownIntegration(raw.to_owned())),
        }
    }

    /// Stores a connect session (single-use, `state_ttl`).
    pub async fn create_session(&self, new: NewSession) -> Result<Session, ConnectError> {
        let integration = self.integration(new.integration.as_str())?;
        for offered in &new.offered {
            self.integration(offered.as_str())?;
        }
        if !new.offered.is_empty() && !new.offered.contains(&new.integration) {
            return Err(ConnectError::NotOffered(new.integration.to_string()));
        }
        if new.confirm && new.redirect_to.is_none() {
            return Err(ConnectError::ConfirmWithoutRedirect);
        }
        let mut given_params = new.connection_params;
        if new.offered.len() > 1 {
            if let Some(name) = given_params.keys().next() {
                return Err(ConnectError::SessionParams(
                    crate::providers::ParamError::Invalid {
                        name: name.chars().take(64).collect(),
                        reason: "connection_params need one integration, not a picker".into(),
                    },
                ));
            }
            for offered in &new.offered {
                let offered = self.integration(offered.as_str())?;
                if let Some(spec) = offered
                    .connection_param_specs()
                    .iter()
                    .find(|p| p.source == crate::providers::ParamSource::Session)
                {
                    return Err(ConnectError::SessionParams(
                        crate::providers::ParamError::Invalid {
                            name: spec.name.clone(),
                            reason: format!(
                                "integration `{}` needs it, so it cannot be offered in a picker: create a session for it alone",
                                offered.key()
                            ),
                        },
                    ));
                }
            }
        }
        if new.reconnect {
            if new.offered.len() > 1 {
                return Err(ConnectError::ReconnectPicker);
            }
            let existing = self
                .vault
                .store()
                .get(&new.user_id, integration.key())
                .await
                .map_err(|err| ConnectError::Save(err.into()))?;
            let Some(existing) = existing else {
                return Err(ConnectError::NothingToReconnect(integration.key().clone()));
            };
            if given_params.is_empty() {
                // Reconnecting keeps the shop (tenant, ...) it was for.
                let stored = crate::providers::ConnectionParams::from_metadata(&existing.metadata);
                given_params = integration
                    .connection_param_specs()
                    .iter()
                    .filter(|p| p.source == crate::providers::ParamSource::Session)
                    .filter_map(|p| Some((p.name.clone(), stored.get(&p.name)?.to_owned())))
                    .collect();
            }
        }
        let connection_params = integration
            .check_session_params(&given_params)
            .map_err(ConnectError::SessionParams)?;
        let id = StateKey::generate();
        let now = self.vault.clock().now();
        // A connect session names no session; an OAuth state always does.
        let record = StateRecord {
            redirect_to: new.redirect_to,
            scopes: new.scopes.to_vec(),
            provider_params: new.provider_params,
            connection_params: connection_params.into_map(),
            confirm: new.confirm,
            offered: if new.offered.len() > 1 {
                new.offered
            } else {
                Vec::new()
            },
            show_page: new.show_page || new.reconnect,
            reconnect: new.reconnect,
            ..StateRecord::new(
                integration.key().clone(),
                new.user_id,
                integration.redirect_uri().to_string(),
                now,
            )
        };
        self.states.put(&id, &record, self.state_ttl).await?;
        Ok(Session {
            id,
            expires_at: now + chrono::Duration::from_std(self.state_ttl).unwrap_or_default(),
        })
    }

    /// What connect link `session_id` leads to, without opening it.
    pub async fn lookup(&self, session_id: &str) -> Result<Lookup, ConnectError> {
        if let Some(session) = self.states.peek(session_id).await?
            && session.connect_session.is_none()
            && session.outcome.is_none()
        {
            return Ok(Lookup::Pending(Box::new(session)));
        }
        let outcome = self
            .states
            .peek(FlowOutcome::key_for(session_id).as_str())
            .await?
            .and_then(|record| record.outcome);
        Ok(outcome.map_or(Lookup::Unknown, Lookup::Opened))
    }

    /// Records how the flow of connect session `session_id` went, for its
    /// result page (kept [`OUTCOME_TTL`]).
    pub async fn record_outcome(
        &self,
        session: &StateRecord,
        session_id: &str,
        outcome: FlowOutcome,
    ) -> Result<(), ConnectError> {
        let record = StateRecord {
            outcome: Some(outcome),
            connect_session: Some(session_id.to_owned()),
            code_verifier: None,
            browser_binding: None,
            authorization_code: None,
            provider_params: BTreeMap::new(),
            created_at: self.vault.clock().now(),
            ..session.clone()
        };
        self.states
            .put(&FlowOutcome::key_for(session_id), &record, OUTCOME_TTL)
            .await?;
        Ok(())
    }

    /// Opens a connect link: takes the session (it cannot be opened twice)
    /// and stores the authorization request's state, with the PKCE verifier
    /// and, unless in confirm mode, the digest of a browser nonce.
    /// `chosen`: the integration picked on the connect page (one of those
    /// the session offers); `None` takes the session's own. `popup_origin`:
    /// the link was opened in a popup by a page on this (allowed) origin.
    pub async fn start(
        &self,
        session_id: &str,
        chosen: Option<&str>,
        popup_origin: Option<String>,
    ) -> Result<Started, ConnectError> {
        let expired =
            "this connect link has expired or was already used; ask the application for a new one";
        let mut session = self
            .states
            .take(session_id)
            .await?
            .ok_or(ConnectError::InvalidState(expired))?;
        if session.connect_session.is_some() || session.outcome.is_some() {
            return Err(ConnectError::InvalidState(expired));
        }
        if let Some(chosen) = chosen {
            let offered = if session.offered.is_empty() {
                std::slice::from_ref(&session.integration)
            } else {
                &session.offered
            };
            let Some(key) = offered.iter().find(|key| key.as_str() == chosen).cloned() else {
                // Put back for what is left of its life: a wrong choice
                // neither uses up the link nor extends it.
                let age = (self.vault.clock().now() - session.created_at)
                    .to_std()
                    .unwrap_or_default();
                let left = self.state_ttl.saturating_sub(age);
                if let Some(key) = StateKey::parse(session_id)
                    && !left.is_zero()
                {
                    self.states.put(&key, &session, left).await?;
                }
                return Err(ConnectError::NotOffered(chosen.to_owned()));
            };
            session.integration = key;
        }
        let integration = self.integration(session.integration.as_str())?;
        session.redirect_uri = integration.redirect_uri().to_string();
        session.popup_origin = popup_origin;
        let started = FlowOutcome {
            status: FlowStatus::Started,
            code: None,
            connection_id: None,
        };
        self.record_outcome(&session, session_id, started).await?;
        let pkce = integration.wants_pkce().then(Pkce::generate);
        let state = StateKey::generate();
        let scopes: Option<Scopes> =
            (!session.scopes.is_empty()).then(|| session.scopes.iter().cloned().collect());
        let browser_nonce = (!session.confirm).then(StateKey::generate);
        let record = StateRecord {
            code_verifier: pkce.as_ref().map(|p| p.verifier().clone()),
            connect_session: Some(session_id.to_owned()),
            created_at: self.vault.clock().now(),
            browser_binding: browser_nonce
                .as_ref()
                .map(|nonce| binding_digest(nonce.as_str())),
            ..session
        };
        self.states.put(&state, &record, self.state_ttl).await?;
        let extras: Vec<(String, String)> = record
            .provider_params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let authorize_url = integration
            .for_connection(&record.connection_params.clone().into())
            .map_err(ConnectError::SessionParams)?
            .authorize_url_with(state.as_str(), pkce.as_ref(), scopes.as_ref(), &extras);
        Ok(Started {
            integration,
            state,
            authorize_url,
            browser_nonce,
        })
    }

    /// Takes the callback's state (whatever happens next, it cannot be
    /// replayed) and finds its integration. `expected`: the integration
    /// named by the callback URL, if any.
    pub async fn take_state(
        &self,
        state: &str,
        expected: Option<&str>,
    ) -> Result<(StateRecord, Arc<Integration>), ConnectError> {
        let unknown = "unknown, expired or already used state; start the connection again";
        let record = self
            .states
            .take(state)
            .await?
            .ok_or(ConnectError::InvalidState(unknown))?;
        // A connect session, or a confirm-mode record waiting for the app,
        // is not a flow's state.
        if record.connect_session.is_none()
            || record.authorization_code.is_some()
            || record.outcome.is_some()
        {
            return Err(ConnectError::InvalidState(unknown));
        }
        if let Some(expected) = expected
            && expected != record.integration.as_str()
        {
            return Err(ConnectError::StateMismatch {
                issued: record.integration,
                expected: expected.to_owned(),
            });
        }
        let integration = self.integration(record.integration.as_str())?;
        Ok((record, integration))
    }

    /// Whether the browser that brought the callback is the one that
    /// opened the connect link: its cookie's nonce matches the state's
    /// digest. A state without a binding (confirm mode) is bound anywhere.
    pub fn bound_to_browser(record: &StateRecord, nonce: Option<&str>) -> bool {
        record
            .browser_binding
            .as_deref()
            .is_none_or(|expected| nonce.is_some_and(|nonce| binding_digest(nonce) == expected))
    }

    /// Ends a callback whose state was taken: stores the connection, or in
    /// confirm mode holds the code for the application's confirmation.
    pub async fn finish(
        &self,
        integration: &Integration,
        record: &StateRecord,
        callback: &Callback,
    ) -> Result<Finished, ConnectError> {
        let code = authorization_code(integration, callback)?;
        // The callback's connection parameters, checked before the code is
        // exchanged (a bad one ends the flow with nothing issued).
        let mut connection_params = record.connection_params.clone();
        connection_params.extend(
            integration
                .check_callback_params(&callback.query)
                .map_err(ConnectError::ProviderParams)?
                .into_map(),
        );
        let record = &StateRecord {
            connection_params,
            ..record.clone()
        };
        if !record.confirm {
            let connection_id = self
                .exchange_and_save(integration, record, code, callback.instance_id.as_deref())
                .await?;
            return Ok(Finished::Connected { connection_id });
        }
        let confirmation = StateKey::generate();
        let pending = StateRecord {
            authorization_code: Some(code.to_owned().into()),
            instance_id: callback.instance_id.clone(),
            created_at: self.vault.clock().now(),
            ..record.clone()
        };
        self.states
            .put(&confirmation, &pending, self.state_ttl)
            .await?;
        Ok(Finished::AwaitingConfirmation { confirmation })
    }

    /// Confirm mode: the application's backend confirms the flow of
    /// connect session `session_id` for the user it has logged in; only now
    /// is the code exchanged and the connection stored. A code brought for
    /// another user is discarded, never exchanged.
    pub async fn confirm(
        &self,
        session_id: &str,
        confirm_code: &str,
        user: &UserId,
    ) -> Result<IntegrationKey, ConnectError> {
        if !StateKey::is_well_formed(confirm_code) {
            return Err(ConnectError::ConfirmationNotFound);
        }
        let record = self
            .states
            .take(confirm_code)
            .await?
            .ok_or(ConnectError::ConfirmationNotFound)?;
        let Some(code) = record
            .authorization_code
            .as_ref()
            .filter(|_| record.connect_session.as_deref() == Some(session_id))
        else {
            return Err(ConnectError::ConfirmationNotFound);
        };
        if record.user_id != *user {
            tracing::warn!(integration = %record.integration, "confirmation for another user than the session's; the flow is discarded");
            metrics::counter!("tokenvault_flow_confirm_mismatch_total", "integration" => record.integration.to_string()).increment(1);
            return Err(ConnectError::UserMismatch);
        }
        let integration = self.integration(record.integration.as_str())?;
        self.exchange_and_save(
            &integration,
            &record,
            code.expose_secret(),
            record.instance_id.as_deref(),
        )
        .await?;
        Ok(integration.key().clone())
    }

    /// Exchanges the code and stores the connection. A grant whose save
    /// fails is revoked at the provider: nobody holds it, and it would
    /// otherwise stay valid there until it expires.
    async fn exchange_and_save(
        &self,
        integration: &Integration,
        record: &StateRecord,
        code: &str,
        instance_id: Option<&str>,
    ) -> Result<String, ConnectError> {
        let requested: Option<Scopes> =
            (!record.scopes.is_empty()).then(|| record.scopes.iter().cloned().collect());
        let known: crate::providers::ConnectionParams = record.connection_params.clone().into();
        let integration = &*integration
            .for_connection(&known)
            .map_err(ConnectError::ProviderParams)?;
        let grant = integration
            .exchange_code(
                code,
                record.code_verifier.as_ref(),
                requested.as_ref(),
                self.vault.clock().now(),
            )
            .await
            .map_err(|err| ConnectError::Exchange(err.to_string()))?;
        let connection_params = match integration.connection_params_for(&known, &grant).await {
            Ok(values) => values,
            Err(err) => {
                tracing::warn!(integration = %integration.key(), error = %err, "a connection parameter from the provider is unusable; the grant is not stored");
                self.revoke_unstored(integration, &grant).await;
                return Err(ConnectError::ProviderParams(err));
            }
        };
        let mut metadata = grant.metadata.clone();
        if let Some(fields) = metadata.as_object_mut() {
            if let Some(instance_id) = instance_id {
                fields.insert("instance_id".into(), json!(instance_id));
            }
            if connection_params.is_empty() {
                fields.remove(crate::providers::ConnectionParams::METADATA_KEY);
            } else {
                fields.insert(
                    crate::providers::ConnectionParams::METADATA_KEY.into(),
                    json!(connection_params),
                );
            }
        }
        let saved = self
            .vault
            .save_grant(
                &record.user_id,
                integration.key(),
                &grant.tokens,
                metadata,
                chrono::Duration::from_std(integration.refresh_buffer()).unwrap_or_default(),
            )
            .await;
        let err = match saved {
            Ok(connection) => return Ok(connection.id.to_string()),
            Err(err) => err,
        };
        tracing::warn!(integration = %integration.key(), error = %err, "storing the grant failed");
        self.revoke_unstored(integration, &grant).await;
        Err(ConnectError::Save(err))
    }

    /// Revokes a grant nobody will hold (it would otherwise stay valid at
    /// the provider until it expires); best effort.
    async fn revoke_unstored(&self, integration: &Integration, grant: &crate::integrations::Grant) {
        match integration.revoke(&grant.tokens).await {
            Ok(true) => {
                tracing::info!(integration = %integration.key(), "revoked the grant whose save failed");
            }
            Ok(false) => {
                tracing::warn!(integration = %integration.key(), "the grant whose save failed cannot be revoked: the provider has no revocation endpoint");
            }
            Err(revoke) => {
                tracing::warn!(integration = %integration.key(), error = %revoke, "revoking the grant whose save failed did not succeed");
            }
        }
        metrics::counter!("tokenvault_flow_orphaned_grants_total", "integration" => integration.key().to_string()).increment(1);
    }
}

/// The callback's authorization code, or why there is none (the provider's
/// error, an issuer mismatch).
fn authorization_code<'a>(
    integration: &Integration,
    callback: &'a Callback,
) -> Result<&'a str, ConnectError> {
    if let Some(error) = &callback.error {
        let provider_code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let description = callback
            .error_description
            .as_deref()
            .unwrap_or("no description")
            .chars()
            .take(200)
            .collect();
        return Err(ConnectError::Provider {
            denied: provider_code == "access_denied",
            provider_code,
            description,
        });
    }
    integration
        .check_callback_issuer(callback.iss.as_deref())
        .map_err(|e| ConnectError::IssuerMismatch(e.to_string()))?;
    callback
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or(ConnectError::MissingCode)
}

/// What the state keeps of the browser's nonce: a hash, so a leaked state
/// store does not hand out the cookie.
fn binding_digest(nonce: &str) -> String {
    hex::encode(Sha256::digest(nonce.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(binding: Option<&str>) -> StateRecord {
        StateRecord {
            browser_binding: binding.map(binding_digest),
            ..StateRecord::new(
                IntegrationKey::parse("spotify").unwrap(),
                UserId::parse("u1").unwrap(),
                "https://app.example/oauth/callback".into(),
                Utc::now(),
            )
        }
    }

    #[test]
    fn a_bound_flow_finishes_only_with_its_own_browser_nonce() {
        let bound = record(Some("nonce-1"));
        assert!(ConnectFlow::bound_to_browser(&bound, Some("nonce-1")));
        assert!(!ConnectFlow::bound_to_browser(&bound, Some("nonce-2")));
        assert!(!ConnectFlow::bound_to_browser(&bound, None));
        assert!(!ConnectFlow::bound_to_browser(&bound, Some("")));
        // The state keeps only a digest: a leaked state holds no cookie.
        assert_ne!(bound.browser_binding.as_deref(), Some("nonce-1"));
        // Confirm mode binds no browser: the application confirms instead.
        let confirm = record(None);
        assert!(ConnectFlow::bound_to_browser(&confirm, None));
    }
}
