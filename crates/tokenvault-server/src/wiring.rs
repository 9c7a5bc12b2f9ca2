//! Builds the library's parts from configuration, once, at start-up.

use std::sync::Arc;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use tokenvault::crypto::{Envelope, KeyRing};
use tokenvault::store::{self, ConnectionStore, PoolOptions};

use crate::config::{Config, Environment};

/// Where the master keys came from; `keys retire` edits a key file but can
/// only advise on an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(std::path::PathBuf),
}

pub fn load_key_ring(config: &Config) -> anyhow::Result<(KeyRing, KeySource)> {
    if let Some(spec) = &config.master_keys {
        let ring = KeyRing::parse(spec.expose_secret(), "TOKENVAULT_MASTER_KEYS")?;
        return Ok((ring, KeySource::Env));
    }
    let path = config.master_key_file();
    if config.environment == Environment::Production && !path.exists() {
        bail!(
            "production requires master keys: set TOKENVAULT_MASTER_KEYS (e.g. from `tokenvault keys generate`) or TOKENVAULT_MASTER_KEY_FILE pointing at an existing key file"
        );
    }
    let (ring, created) = KeyRing::load_or_create_file(&path)?;
    if created {
        let banner = format!(
            "WARNING: generated a development master key in {}.\n\
             WARNING: Every token is encrypted under it: losing it loses every connection.\n\
             WARNING: Production must supply its own keys (TOKENVAULT_MASTER_KEYS) from a secret manager.",
            path.display()
        );
        eprintln!("{banner}");
        tracing::warn!(path = %path.display(), "generated a development master key; production must supply its own");
    }
    Ok((ring, KeySource::File(path)))
}

pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn ConnectionStore>> {
    let options = PoolOptions {
        max_connections: config.database_max_connections,
        ..PoolOptions::default()
    };
    let url = config.database_url();
    let store = store::connect(&url, &options)
        .await
        .context("opening the database (TOKENVAULT_DATABASE_URL)")?;
    Ok(store)
}

pub fn envelope(ring: KeyRing) -> Envelope {
    Envelope::new(Arc::new(ring))
}
