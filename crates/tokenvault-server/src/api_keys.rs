//! `tokenvault api-keys …`: keys for the `/v1` API.

use anyhow::Context;
use secrecy::ExposeSecret;
use tokenvault::api_keys::{self, ApiKeyRecord, Scope};

use crate::config::Config;
use crate::wiring;

/// Creates a key and prints it once, alone on stdout (so scripts can capture
/// it); everything else goes to stderr.
pub async fn create(config: &Config, name: &str, scope: Scope) -> anyhow::Result<()> {
    let key = api_keys::generate(name, scope, chrono::Utc::now())?;
    let store = wiring::open_api_key_store(config).await?;
    store.insert(&key).await.context("storing the API key")?;
    println!("{}", key.key.expose_secret());
    eprintln!(
        "created API key {} ({:?}, scope {scope}). It is shown only this once: store it in your secret manager.\n\
         Use it as `Authorization: Bearer <key>`; revoke it with `tokenvault api-keys revoke {}`.",
        key.record.id, key.record.name, key.record.id
    );
    Ok(())
}

pub async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = wiring::open_api_key_store(config).await?;
    let keys = store.list().await?;
    if json {
        let rows: Vec<_> = keys.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if keys.is_empty() {
        println!(
            "no API keys; create one with `tokenvault api-keys create --name NAME --scope SCOPE`"
        );
        return Ok(());
    }
    println!(
        "{:<12}  {:<11}  {:<7}  {:<20}  {:<20}  name",
        "id", "scope", "state", "created", "last used"
    );
    for key in &keys {
        println!(
            "{:<12}  {:<11}  {:<7}  {:<20}  {:<20}  {}",
            key.id,
            key.scope.as_str(),
            if key.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            key.created_at.format("%Y-%m-%d %H:%M:%S"),
            key.last_used_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_else(|| "never".into()),
            key.name
        );
    }
    Ok(())
}

fn to_json(key: &ApiKeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": key.id,
        "name": key.name,
        "scope": key.scope.as_str(),
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    })
}

pub async fn revoke(config: &Config, id: &str) -> anyhow::Result<()> {
    let store = wiring::open_api_key_store(config).await?;
    if store.revoke(id, chrono::Utc::now()).await? {
        println!(
            "revoked API key {id}; every instance refuses it within {} s",
            crate::http::KEY_CACHE_TTL.as_secs()
        );
    } else {
        println!("API key {id} was already revoked");
    }
    Ok(())
}
