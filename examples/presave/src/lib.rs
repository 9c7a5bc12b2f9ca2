//! A Spotify pre-save campaign on the tokenvault library.
//!
//! Fans connect Spotify before a release (through tokenvault's connect
//! flow, which stores their grant). On release day [`Campaign::release`]
//! saves the track to every connected fan's library with one durable bulk
//! action (`PUT me/tracks?ids=<track>` per fan, at a bounded rate, with
//! refreshes, 401 retries and 429 back-off handled by tokenvault), then
//! asks Spotify whether each library now holds the track
//! (`GET me/tracks/contains?ids=<track>`) and reports, per fan, whether the
//! save was confirmed, failed, or skipped because the fan must reconnect.
//!
//! Everything here goes through public tokenvault APIs; the wiring in
//! [`Campaign::open`] has the same shape as the server's (`wiring.rs`),
//! minus the HTTP parts.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use tokenvault::bulk::{
    BulkActions, BulkItem, BulkSettings, BulkSpecInput, BulkWorker, ItemState, RequestInput,
    RunEnd, SqlBulkStore, UsersByStatus, UsersInput,
};
use tokenvault::crypto::KeyRing;
use tokenvault::domain::{IntegrationKey, UserId};
use tokenvault::integrations::{IntegrationConfig, IntegrationsConfig};
use tokenvault::oauth::{OAuthClient, OAuthClientConfig};
use tokenvault::open::OpenOptions;
use tokenvault::providers::Catalog;
use tokenvault::proxy::{ApiRequest, RequestOptions, SendGate};
use tokenvault::store::PoolOptions;
use tokenvault::vault::Vault;
use tokio::sync::watch;
use url::Url;

/// The integration key the campaign uses (and the built-in catalog entry).
pub const SPOTIFY: &str = "spotify";

/// What the campaign needs from Spotify: saving to and reading the fan's
/// library.
pub const SCOPES: [&str; 2] = ["user-library-modify", "user-library-read"];

/// Where the example's app is registered at Spotify.
#[derive(Debug, Clone)]
pub struct SpotifyApp {
    pub client_id: String,
    pub client_secret: SecretString,
    /// Only the connect flow uses it (not this program), but tokenvault
    /// requires every integration to have one, and it must be the one the
    /// fans' grants were issued for.
    pub redirect_uri: Url,
}

/// How to open the campaign's vault.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `sqlite://presave.db` (or a PostgreSQL URL); the same database the
    /// tokenvault server that ran the connect flow writes to.
    pub database_url: String,
    /// `k1:BASE64,...` as `TOKENVAULT_MASTER_KEYS`: the keys the fans'
    /// tokens were sealed with.
    pub master_keys: SecretString,
    /// A `providers.toml` whose entries override the built-in catalog (the
    /// test points `spotify` at a fake with it).
    pub providers_file: Option<PathBuf>,
    pub spotify: SpotifyApp,
}

/// One release.
#[derive(Debug, Clone)]
pub struct Release {
    /// The Spotify track id (base62, as in `open.spotify.com/track/<id>`).
    pub track_id: String,
    /// Saves (and later confirmations) per second, across all fans.
    pub rate_per_second: f64,
    /// Nothing is sent before this time (default: now).
    pub not_before: Option<DateTime<Utc>>,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Release {
    pub fn new(track_id: impl Into<String>) -> Self {
        Self {
            track_id: track_id.into(),
            rate_per_second: 20.0,
            not_before: None,
            concurrency: 16,
        }
    }
}

/// Where a fan's save went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The bulk action's `PUT me/tracks`.
    Save,
    /// The `GET me/tracks/contains` afterwards.
    Confirm,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Save => "save",
            Self::Confirm => "confirm",
        })
    }
}

/// What happened for one fan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Saved, and Spotify says the library holds the track.
    Confirmed,
    /// Spotify refused, kept failing, or does not show the track saved.
    Failed {
        stage: Stage,
        /// Spotify's HTTP status, when it answered.
        status: Option<u16>,
        /// `unauthorized`, `provider_error`, `rate_limited`, `not_saved`, ...
        error: String,
        message: Option<String>,
    },
    /// Nothing was sent: the fan's grant is gone (revoked at
    /// spotify.com/account/apps, or expired); they must connect again.
    Skipped {
        /// `needs_reauth` or `not_connected`.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanResult {
    pub user_id: String,
    pub outcome: Outcome,
}

/// The per-fan report of one release.
#[derive(Debug, Clone)]
pub struct Report {
    pub action_id: uuid::Uuid,
    pub track_id: String,
    /// In the bulk action's order.
    pub fans: Vec<FanResult>,
}

impl Report {
    pub fn confirmed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Confirmed))
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed { .. }))
    }

    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped { .. }))
    }

    pub fn outcome(&self, user_id: &str) -> Option<&Outcome> {
        self.fans
            .iter()
            .find(|fan| fan.user_id == user_id)
            .map(|fan| &fan.outcome)
    }

    fn count(&self, which: impl Fn(&Outcome) -> bool) -> usize {
        self.fans.iter().filter(|fan| which(&fan.outcome)).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for fan in &self.fans {
            write!(f, "{}\t", fan.user_id)?;
            match &fan.outcome {
                Outcome::Confirmed => writeln!(f, "saved, confirmed")?,
                Outcome::Skipped { reason } => {
                    writeln!(f, "skipped: {reason} (the fan must connect Spotify again)")?;
                }
                Outcome::Failed {
                    stage,
                    status,
                    error,
                    message,
                } => {
                    write!(f, "FAILED at {stage}: {error}")?;
                    if let Some(status) = status {
                        write!(f, " (HTTP {status})")?;
                    }
                    if let Some(message) = message {
                        write!(f, ": {message}")?;
                    }
                    writeln!(f)?;
                }
            }
        }
        writeln!(
            f,
            "track {} (bulk action {}): {} fans, {} saved and confirmed, {} failed, {} skipped",
            self.track_id,
            self.action_id,
            self.fans.len(),
            self.confirmed(),
            self.failed(),
            self.skipped()
        )
    }
}

/// The campaign's vault and bulk actions, on one database.
#[derive(Clone)]
pub struct Campaign {
    vault: Vault,
    bulk: BulkActions,
    spotify: IntegrationKey,
}

impl Campaign {
    /// Opens (and migrates) the database and configures Spotify.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let ring = KeyRing::parse(
            settings.master_keys.expose_secret(),
            "TOKENVAULT_MASTER_KEYS",
        )?;
        let catalog = load_catalog(settings.providers_file.as_ref())?;
        let spotify = IntegrationKey::parse(SPOTIFY).expect("a valid key");
        let config = IntegrationConfig {
            provider: SPOTIFY.to_owned(),
            client_id: settings.spotify.client_id.clone(),
            client_secret: Some(settings.spotify.client_secret.clone()),
            redirect_uri: Some(settings.spotify.redirect_uri.clone()),
            scopes: Some(SCOPES.iter().map(|s| (*s).to_owned()).collect()),
            ..IntegrationConfig::default()
        };
        let mut integrations = IntegrationsConfig::default();
        integrations.integrations.insert(spotify.clone(), config);
        integrations.validate(None, false)?;
        let oauth = OAuthClient::new(OAuthClientConfig::default())?;
        let opened = tokenvault::open::open(OpenOptions {
            database_url: &settings.database_url,
            pool: PoolOptions::default(),
            migrate: true,
            keys: ring,
            catalog: &catalog,
            integrations: &integrations,
            oauth: &oauth,
        })
        .await
        .with_context(|| format!("opening the vault on {}", settings.database_url))?;
        let database = opened.database;
        // Picks up a "misconfigured" verdict another instance recorded, so
        // we do not hammer Spotify with credentials it already refused.
        let vault = opened
            .builder
            .start()
            .await
            .context("loading integration health")?;
        let bulk = BulkActions::new(vault.clone(), SqlBulkStore::on(&database));
        Ok(Self {
            vault,
            bulk,
            spotify,
        })
    }

    /// For storing grants (the connect flow does this in the real app) and
    /// reading connections.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    pub fn integration(&self) -> &IntegrationKey {
        &self.spotify
    }

    /// Saves the track for every fan whose Spotify connection is
    /// `connected`, then confirms each save. Returns once every fan has an
    /// outcome; `shutdown` turning true stops early (the action stays in
    /// the database, where `tokenvault bulk resume` can finish it).
    pub async fn release(
        &self,
        release: &Release,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Report> {
        check_track_id(&release.track_id)?;
        let action_id = self.save_for_every_fan(release, shutdown).await?;
        let items = self.all_items(action_id).await?;
        let fans = self.confirm(release, items).await;
        Ok(Report {
            action_id,
            track_id: release.track_id.clone(),
            fans,
        })
    }

    /// Creates the bulk action and runs it here until every item is final.
    async fn save_for_every_fan(
        &self,
        release: &Release,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<uuid::Uuid> {
        let input = BulkSpecInput {
            integration: SPOTIFY.to_owned(),
            // Who is connected *now*: a fan who connects after this point
            // is not part of this release's action.
            users: UsersInput::Select(UsersByStatus {
                status: "connected".to_owned(),
            }),
            request: RequestInput {
                method: "PUT".to_owned(),
                path: "me/tracks".to_owned(),
                query: Some(json!({ "ids": release.track_id })),
                body: None,
                headers: Default::default(),
            },
            not_before: release.not_before.map(|at| at.to_rfc3339()),
            rate_per_second: Some(release.rate_per_second),
        };
        let spec = self.bulk.parse(&input)?;
        let settings = BulkSettings {
            concurrency: release.concurrency.max(1),
            ..BulkSettings::default()
        };
        let worker = BulkWorker::new(self.bulk.clone(), settings);
        // Created already leased to us, so a tokenvault server on the same
        // database does not pick it up and run it alongside this process.
        let view = worker.create(spec).await?;
        let id = view.id;
        tracing::info!(action = %id, fans = view.total, "pre-save bulk action created");
        match worker.run(id, shutdown).await? {
            RunEnd::Completed => Ok(id),
            RunEnd::Stopped => bail!(
                "stopped before every fan was done; `tokenvault bulk resume {id}` (or a running `tokenvault serve` on this database) finishes bulk action {id}"
            ),
            RunEnd::Cancelled => bail!("bulk action {id} was cancelled"),
            RunEnd::LeaseLost => bail!("another runner took bulk action {id} over"),
        }
    }

    async fn all_items(&self, id: uuid::Uuid) -> anyhow::Result<Vec<BulkItem>> {
        const PAGE: u32 = 1000;
        let mut items = Vec::new();
        let mut after = None;
        loop {
            let page = self.bulk.items(id, None, after, PAGE).await?;
            let done = page.len() < PAGE as usize;
            after = page.last().map(|item| item.seq).or(after);
            items.extend(page);
            if done {
                return Ok(items);
            }
        }
    }

    /// Turns each finished item into the fan's outcome, asking Spotify to
    /// confirm every save (at the release's rate, `concurrency` at a time).
    async fn confirm(&self, release: &Release, items: Vec<BulkItem>) -> Vec<FanResult> {
        let gate: Arc<dyn SendGate> = Arc::new(Pace::new(release.rate_per_second));
        futures::stream::iter(items)
            .map(|item| {
                let gate = Arc::clone(&gate);
                async move {
                    let outcome = match item.state {
                        ItemState::Succeeded => {
                            self.confirm_one(&item.user_id, &release.track_id, gate)
                                .await
                        }
                        ItemState::Skipped => Outcome::Skipped {
                            reason: item.error_code.unwrap_or_else(|| "skipped".to_owned()),
                        },
                        ItemState::Failed => Outcome::Failed {
                            stage: Stage::Save,
                            status: item.status_code,
                            error: item.error_code.unwrap_or_else(|| "failed".to_owned()),
                            message: item.error_message,
                        },
                        // The action completed, so no item is pending or
                        // running; cancelled would mean someone cancelled it.
                        other => Outcome::Failed {
                            stage: Stage::Save,
                            status: None,
                            error: format!("item_{other}"),
                            message: None,
                        },
                    };
                    FanResult {
                        user_id: item.user_id,
                        outcome,
                    }
                }
            })
            // `buffered` keeps the action's order in the report.
            .buffered(release.concurrency.max(1))
            .collect()
            .await
    }

    /// `GET me/tracks/contains?ids=<track>` answers `[true]` once saved.
    async fn confirm_one(&self, user_id: &str, track_id: &str, gate: Arc<dyn SendGate>) -> Outcome {
        let failed = |status: Option<u16>, error: &str, message: Option<String>| Outcome::Failed {
            stage: Stage::Confirm,
            status,
            error: error.to_owned(),
            message,
        };
        let user = match UserId::parse(user_id) {
            Ok(user) => user,
            Err(err) => return failed(None, "invalid_user_id", Some(err.to_string())),
        };
        let request = ApiRequest::parse(Method::GET, "me/tracks/contains")
            .expect("a valid path")
            .query_pairs([("ids", track_id)]);
        let options = RequestOptions {
            gate: Some(gate),
            ..RequestOptions::default()
        };
        let response = match self
            .vault
            .request_with(&user, &self.spotify, request, options)
            .await
        {
            Ok(response) => response,
            Err(err) => return failed(None, "request_failed", Some(err.to_string())),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => {
                return failed(
                    Some(status.as_u16()),
                    "request_failed",
                    Some(err.to_string()),
                );
            }
        };
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return failed(Some(status.as_u16()), "provider_error", Some(text));
        }
        match serde_json::from_slice::<Vec<bool>>(&body).as_deref() {
            Ok([true]) => Outcome::Confirmed,
            Ok(_) => failed(
                Some(200),
                "not_saved",
                Some("Spotify does not list the track in the fan's library".to_owned()),
            ),
            Err(err) => failed(Some(200), "unexpected_answer", Some(err.to_string())),
        }
    }
}

fn load_catalog(path: Option<&PathBuf>) -> anyhow::Result<Catalog> {
    let catalog = Catalog::builtin();
    let Some(path) = path else {
        return Ok(catalog);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the providers file {}", path.display()))?;
    catalog
        .merge_toml_str(&text)
        .with_context(|| format!("providers file {}", path.display()))
}

/// Spotify ids are base62; anything else would also not belong in the
/// query string.
fn check_track_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("{id:?} is not a Spotify track id (the base62 id in open.spotify.com/track/<id>)");
    }
    Ok(())
}

/// Spaces confirmation requests evenly at the release's rate, so the
/// confirmation pass does not burst at Spotify right after the saves. The
/// vault calls it right before every send, retries included.
struct Pace {
    spacing: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(rate_per_second: f64) -> Self {
        Self {
            spacing: Duration::from_secs_f64(1.0 / rate_per_second.max(0.001)),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }
}

#[async_trait::async_trait]
impl SendGate for Pace {
    async fn ready(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.spacing;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_ids_must_be_base62() {
        assert!(check_track_id("4uLU6hMCjMI75M1A2tKUQC").is_ok());
        for bad in ["", "a&ids=b", "a,b", "spotify:track:x", "tr ack"] {
            assert!(check_track_id(bad).is_err(), "{bad:?}");
        }
    }
}
