//! One way to open a working vault from options, used by the server's
//! wiring and by embedding applications (`examples/presave`): the database
//! opened (and migrated), the integrations resolved against the catalog,
//! a [`VaultBuilder`] on both for the caller's settings, and
//! [`VaultBuilder::start`] to build it with the integration health other
//! instances recorded.

use std::sync::Arc;

use crate::crypto::{Envelope, KeyRing};
use crate::integrations::{IntegrationConfigError, Integrations, IntegrationsConfig};
use crate::oauth::OAuthClient;
use crate::providers::Catalog;
use crate::store::{Database, PoolOptions, StoreError};
use crate::vault::{Vault, VaultBuilder};

/// What a working vault is opened from.
pub struct OpenOptions<'a> {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`.
    pub database_url: &'a str,
    pub pool: PoolOptions,
    /// Apply pending migrations first (refusing a newer schema).
    pub migrate: bool,
    pub keys: KeyRing,
    pub catalog: &'a Catalog,
    /// Already validated by the caller's policy
    /// ([`IntegrationsConfig::validate`]).
    pub integrations: &'a IntegrationsConfig,
    pub oauth: &'a OAuthClient,
}

/// Why a vault could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the database: {0}")]
    Database(#[source] StoreError),
    #[error("migrating the database: {0}")]
    Migrate(#[source] StoreError),
    #[error("resolving the integrations: {0}")]
    Integrations(#[from] IntegrationConfigError),
}

/// An opened database and a vault builder on it.
pub struct Opened {
    /// For the other stores on the same pool (bulk actions, device
    /// sessions, OAuth state, API keys).
    pub database: Database,
    pub integrations: Arc<Integrations>,
    /// The vault on `database` with `integrations`; add settings, then
    /// [`VaultBuilder::start`].
    pub builder: VaultBuilder,
}

/// Opens the database (migrating it when asked) and resolves the
/// integrations (OIDC discovery included).
pub async fn open(options: OpenOptions<'_>) -> Result<Opened, OpenError> {
    let database = Database::open(options.database_url, &options.pool)
        .await
        .map_err(OpenError::Database)?;
    let store = database.store();
    if options.migrate {
        store.migrate().await.map_err(OpenError::Migrate)?;
    }
    let integrations = Arc::new(
        Integrations::resolve(options.integrations, options.catalog, options.oauth).await?,
    );
    let builder = Vault::builder(store, Envelope::new(Arc::new(options.keys)))
        .integrations(Arc::clone(&integrations));
    Ok(Opened {
        database,
        integrations,
        builder,
    })
}

impl VaultBuilder {
    /// Builds the vault and loads the integration health other instances
    /// recorded, so a client another instance found misconfigured is not
    /// tried again here.
    pub async fn start(self) -> Result<Vault, StoreError> {
        let vault = self.build();
        vault.sync_integration_health().await?;
        Ok(vault)
    }
}
