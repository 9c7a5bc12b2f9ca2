//! The device authorization grant (RFC 8628), run by tokenvault itself.
//!
//! [`DeviceFlow::start`] asks the provider for a device code and stores a
//! [`DeviceSession`]: the user code goes back to the caller, the device code
//! stays here, sealed under the session's own data key (associated data bound
//! to the session id) and never logged. A [`DevicePoller`] — one per instance,
//! any number of instances — claims due sessions from the table with a lease,
//! polls the provider at the session's interval (+5 s after `slow_down`),
//! stores the grant through [`Vault::save_grant`] when the user approves, and
//! records `denied`, `expired` or `error` otherwise. All state lives in the
//! `device_sessions` table, so polling resumes after a restart and several
//! instances never poll one session at once.

mod poller;
mod store;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

pub use poller::{DevicePoller, DevicePollerHandle, PollerSettings};
pub use store::SqlDeviceSessionStore;

use crate::crypto::{CryptoError, SealedDeviceCode, WrappedKey};
use crate::domain::{Clock, DeviceSessionId, IntegrationKey, Scopes, UserId};
use crate::integrations::{DeviceGrantPoll, Integration, Integrations};
use crate::oauth::OAuthError;
use crate::store::{LastError, Lease, StoreError};
use crate::vault::Vault;

/// RFC 8628 §3.5: after `slow_down` the interval grows by 5 s for this and
/// every later poll.
pub const SLOW_DOWN_STEP_SECS: u64 = 5;

/// Where a device session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum DeviceSessionStatus {
    /// Waiting for the user; tokenvault keeps polling.
    Pending,
    /// The user approved; the grant is stored as a connection.
    Connected,
    /// The user refused.
    Denied,
    /// The device code expired before the user decided (or the provider no
    /// longer knows it); start a new session.
    Expired,
    /// The provider (or storing the grant) failed for good; see the error.
    Error,
}

impl DeviceSessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Connected => "connected",
            Self::Denied => "denied",
            Self::Expired => "expired",
            Self::Error => "error",
        }
    }

    pub fn is_finished(self) -> bool {
        self != Self::Pending
    }
}

impl fmt::Display for DeviceSessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceSessionStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => Self::Pending,
            "connected" => Self::Connected,
            "denied" => Self::Denied,
            "expired" => Self::Expired,
            "error" => Self::Error,
            other => return Err(format!("unknown device session status {other:?}")),
        })
    }
}

/// A session to store, right after the provider's device authorization.
#[derive(Debug, Clone)]
pub struct NewDeviceSession {
    pub id: DeviceSessionId,
    pub user_id: UserId,
    pub integration: IntegrationKey,
    /// What was asked for; empty means the integration's default scopes.
    pub scopes: Scopes,
    pub sealed: SealedDeviceCode,
    pub interval_secs: u64,
    pub next_poll_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
    pub shown: ShownCode,
}

/// What the user is shown: the code to enter and where (not secret: it is
/// read off a screen; the device code is what stays sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownCode {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
}

/// One stored session. The device code stays sealed; it is erased once the
/// session is finished.
#[derive(Debug, Clone)]
pub struct DeviceSession {
    pub id: DeviceSessionId,
    pub user_id: UserId,
    pub integration: IntegrationKey,
    pub scopes: Scopes,
    pub status: DeviceSessionStatus,
    pub interval_secs: u64,
    pub next_poll_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `None` once the session is finished.
    pub device_code: Option<Vec<u8>>,
    pub data_key: WrappedKey,
    /// Why the session ended in `error`; while pending, why the last poll
    /// failed (a transient failure that will be retried).
    pub last_error: Option<LastError>,
    pub lease: Option<Lease>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `None` for sessions started before tokenvault kept it.
    pub shown: Option<ShownCode>,
}

impl DeviceSession {
    /// The status as callers should see it at `now`: a pending session past
    /// its expiry is expired even before a poller has recorded it.
    pub fn status_at(&self, now: DateTime<Utc>) -> DeviceSessionStatus {
        if self.status == DeviceSessionStatus::Pending && now >= self.expires_at {
            DeviceSessionStatus::Expired
        } else {
            self.status
        }
    }
}

/// What one poll decided, written back by [`DeviceSessionStore::finish_poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollOutcome {
    pub status: DeviceSessionStatus,
    pub interval_secs: u64,
    pub next_poll_at: DateTime<Utc>,
    pub last_error: Option<LastError>,
}

/// Storage of device sessions (table `device_sessions`, created by the
/// connection store's migrations).
#[async_trait::async_trait]
pub trait DeviceSessionStore: Send + Sync + 'static {
    async fn insert(&self, session: &NewDeviceSession) -> Result<DeviceSession, StoreError>;

    async fn get(&self, id: DeviceSessionId) -> Result<Option<DeviceSession>, StoreError>;

    /// Leases up to `limit` pending sessions whose `next_poll_at` has come,
    /// skipping sessions another owner holds an unexpired lease on. Of any
    /// number of concurrent claimers, at most one gets a given session.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<DeviceSession>, StoreError>;

    /// Writes a poll's outcome and releases the lease, if the session is still
    /// pending and `owner` still holds the lease; `false` otherwise. A
    /// finished session's device code is erased.
    async fn finish_poll(
        &self,
        id: DeviceSessionId,
        owner: &str,
        outcome: &PollOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Deletes finished sessions not updated since `before` (retention).
    async fn purge_finished(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// Why a device session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DeviceFlowError {
    #[error("provider `{0}` has no device authorization endpoint")]
    Unsupported(String),
    #[error("the device authorization request failed: {0}")]
    Provider(#[source] OAuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A started session and what to show the user.
#[derive(Debug, Clone)]
pub struct StartedDeviceSession {
    pub session: DeviceSession,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
}

/// Starts device sessions and polls them. Cheap to clone.
#[derive(Clone)]
pub struct DeviceFlow {
    store: Arc<dyn DeviceSessionStore>,
    vault: Vault,
    integrations: Arc<Integrations>,
}

impl DeviceFlow {
    pub fn new(
        store: Arc<dyn DeviceSessionStore>,
        vault: Vault,
        integrations: Arc<Integrations>,
    ) -> Self {
        Self {
            store,
            vault,
            integrations,
        }
    }

    pub fn store(&self) -> &Arc<dyn DeviceSessionStore> {
        &self.store
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        self.vault.clock()
    }

    /// Runs the device authorization request for `user` and stores the
    /// pending session. `scopes: None` (or empty) asks for the integration's
    /// default scopes.
    pub async fn start(
        &self,
        user: UserId,
        integration: &Integration,
        scopes: Option<&Scopes>,
    ) -> Result<StartedDeviceSession, DeviceFlowError> {
        if integration.spec().device_authorization_url.is_none() {
            return Err(DeviceFlowError::Unsupported(integration.spec().key.clone()));
        }
        if let Some(param) = integration.connection_param_specs().iter().find(|p| {
            matches!(
                p.source,
                crate::providers::ParamSource::Session
                    | crate::providers::ParamSource::Callback { .. }
            )
        }) {
            return Err(DeviceFlowError::Provider(OAuthError::ConnectionParams(
                format!(
                    "provider `{}` needs connection parameter `{}` from a connect session or its callback, which the device flow does not have",
                    integration.spec().key,
                    param.name
                ),
            )));
        }
        let scopes = scopes.filter(|s| !s.is_empty());
        let authorization = integration
            .device_authorize(scopes)
            .await
            .map_err(DeviceFlowError::Provider)?;
        let id = DeviceSessionId::new();
        let sealed = self
            .vault
            .envelope()
            .seal_device_code(id, &authorization.device_code)
            .await?;
        let now = self.clock().now();
        let session = self
            .store
            .insert(&NewDeviceSession {
                id,
                user_id: user,
                integration: integration.key().clone(),
                scopes: scopes.cloned().unwrap_or_default(),
                sealed,
                interval_secs: authorization.interval.min(MAX_SECS),
                next_poll_at: now + secs(authorization.interval),
                expires_at: now + secs(authorization.expires_in),
                now,
                shown: ShownCode {
                    user_code: authorization.user_code.clone(),
                    verification_uri: authorization.verification_uri.clone(),
                    verification_uri_complete: authorization.verification_uri_complete.clone(),
                },
            })
            .await?;
        tracing::info!(
            session = %session.id,
            integration = %session.integration,
            interval = session.interval_secs,
            "device session started"
        );
        Ok(StartedDeviceSession {
            session,
            user_code: authorization.user_code,
            verification_uri: authorization.verification_uri,
            verification_uri_complete: authorization.verification_uri_complete,
        })
    }

    pub async fn get(&self, id: DeviceSessionId) -> Result<Option<DeviceSession>, StoreError> {
        self.store.get(id).await
    }

    /// Polls the provider once for a (claimed) pending session and decides
    /// what to record. On approval the grant is stored first, so the session
    /// only reads `connected` once the connection exists. Never fails: every
    /// problem becomes an outcome (a transient one keeps the session pending).
    pub async fn poll(&self, session: &DeviceSession) -> PollOutcome {
        let now = self.clock().now();
        let interval = session.interval_secs.max(1);
        let finished = |status, last_error| PollOutcome {
            status,
            interval_secs: interval,
            next_poll_at: now,
            last_error,
        };
        let failed = |code: &str, message: String| {
            finished(
                DeviceSessionStatus::Error,
                Some(LastError {
                    code: code.to_owned(),
                    message,
                }),
            )
        };
        let again = |interval: u64, wait: u64, last_error| PollOutcome {
            status: DeviceSessionStatus::Pending,
            interval_secs: interval,
            // Polling stops at expiry: the poll that finds it due then records `expired`.
            next_poll_at: (now + secs(wait)).min(session.expires_at),
            last_error,
        };

        if now >= session.expires_at {
            return finished(DeviceSessionStatus::Expired, None);
        }
        let Some(integration) = self.integrations.get(&session.integration) else {
            return failed(
                "unknown_integration",
                format!(
                    "integration `{}` is no longer configured",
                    session.integration
                ),
            );
        };
        let Some(blob) = session.device_code.as_deref() else {
            return failed("internal", "the device code was erased".into());
        };
        let device_code = match self
            .vault
            .envelope()
            .open_device_code(session.id, &session.data_key, blob)
            .await
        {
            Ok(code) => code,
            Err(err) => {
                tracing::error!(session = %session.id, error = %err, "cannot open the device code");
                return failed("internal", format!("cannot open the device code: {err}"));
            }
        };
        let scopes = (!session.scopes.is_empty()).then_some(&session.scopes);
        match integration.poll_device(&device_code, scopes, now).await {
            Ok(DeviceGrantPoll::Pending) => again(interval, interval, None),
            Ok(DeviceGrantPoll::SlowDown) => {
                let slower = interval.saturating_add(SLOW_DOWN_STEP_SECS).min(MAX_SECS);
                tracing::info!(session = %session.id, interval = slower, "provider asked to slow down");
                again(slower, slower, None)
            }
            Ok(DeviceGrantPoll::Denied) => finished(DeviceSessionStatus::Denied, None),
            Ok(DeviceGrantPoll::Expired) => finished(DeviceSessionStatus::Expired, None),
            Ok(DeviceGrantPoll::Complete(grant)) => {
                let params = match integration
                    .connection_params_for(&crate::providers::ConnectionParams::new(), &grant)
                    .await
                {
                    Ok(params) => params,
                    Err(err) => {
                        tracing::warn!(session = %session.id, error = %err, "a connection parameter from the provider is unusable; the grant is not stored");
                        if let Err(revoke) = integration.revoke(&grant.tokens).await {
                            tracing::warn!(session = %session.id, error = %revoke, "revoking the unstored device grant failed");
                        }
                        return failed(
                            "provider_error",
                            format!("the provider's answer is unusable: {err}"),
                        );
                    }
                };
                let mut metadata = grant.metadata.clone();
                if !params.is_empty()
                    && let Some(fields) = metadata.as_object_mut()
                {
                    fields.insert(
                        crate::providers::ConnectionParams::METADATA_KEY.into(),
                        serde_json::json!(params),
                    );
                }
                let saved = self
                    .vault
                    .save_grant(
                        &session.user_id,
                        &session.integration,
                        &grant.tokens,
                        metadata,
                        Duration::from_std(integration.refresh_buffer()).unwrap_or_default(),
                    )
                    .await;
                match saved {
                    Ok(_) => finished(DeviceSessionStatus::Connected, None),
                    Err(err) => {
                        tracing::error!(session = %session.id, error = %err, "storing the device grant failed");
                        failed("internal", "storing the connection failed".into())
                    }
                }
            }
            // The provider no longer knows the code: it expired (some servers
            // forget expired codes) or was already exchanged.
            Err(err) if err.is_invalid_grant() => finished(DeviceSessionStatus::Expired, None),
            Err(err) if is_transient(&err) => {
                let wait = err
                    .retry_after()
                    .map_or(interval, |d| d.as_secs().max(interval));
                tracing::warn!(session = %session.id, error = %err, "device poll failed; will retry");
                let code = err.oauth_error_code().unwrap_or("provider_unavailable");
                again(
                    interval,
                    wait,
                    Some(LastError {
                        code: code.to_owned(),
                        message: err.to_string(),
                    }),
                )
            }
            Err(err) => {
                tracing::warn!(session = %session.id, error = %err, "device poll failed");
                failed("provider_error", err.to_string())
            }
        }
    }
}

/// Failures worth polling again for: the provider was unreachable, slow,
/// overloaded or broken for a moment.
fn is_transient(err: &OAuthError) -> bool {
    match err {
        OAuthError::Timeout | OAuthError::Connect(_) => true,
        OAuthError::Http { status, .. } => *status == 429 || *status >= 500,
        OAuthError::Provider { status, error, .. } => {
            *status == 429
                || *status >= 500
                || matches!(error.as_str(), "temporarily_unavailable" | "server_error")
        }
        OAuthError::InvalidResponse(_)
        | OAuthError::Config(_)
        | OAuthError::ConnectionParams(_) => false,
    }
}

/// Longest wait or lifetime taken from a provider's numbers (a day), so a
/// garbage `interval` or `expires_in` cannot overflow a timestamp.
const MAX_SECS: u64 = 86_400;

fn secs(s: u64) -> Duration {
    Duration::seconds(s.min(MAX_SECS) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [
            DeviceSessionStatus::Pending,
            DeviceSessionStatus::Connected,
            DeviceSessionStatus::Denied,
            DeviceSessionStatus::Expired,
            DeviceSessionStatus::Error,
        ] {
            assert_eq!(status.as_str().parse::<DeviceSessionStatus>(), Ok(status));
            assert_eq!(status.is_finished(), status != DeviceSessionStatus::Pending);
        }
        assert!("approved".parse::<DeviceSessionStatus>().is_err());
    }

    #[test]
    fn transient_failures_are_retried_and_others_are_not() {
        let provider = |status, error: &str| OAuthError::Provider {
            status,
            error: error.into(),
            description: None,
            retry_after: None,
        };
        assert!(is_transient(&OAuthError::Timeout));
        assert!(is_transient(&provider(503, "server_error")));
        assert!(is_transient(&provider(429, "rate_limited")));
        assert!(is_transient(&OAuthError::Http {
            status: 502,
            retry_after: None,
            body_excerpt: String::new(),
        }));
        assert!(!is_transient(&provider(401, "invalid_client")));
        assert!(!is_transient(&provider(400, "unauthorized_client")));
        assert!(!is_transient(&OAuthError::InvalidResponse("x".into())));
    }

    #[test]
    fn huge_provider_numbers_do_not_overflow() {
        assert_eq!(secs(5), Duration::seconds(5));
        assert_eq!(secs(u64::MAX), Duration::days(1));
        let _ = Utc::now() + secs(u64::MAX);
    }
}
