//! `tokenvault connections …`: find, inspect, refresh and revoke
//! connections from the shell, straight on the database (no running
//! service needed). JSON output has the API's shapes.

use anyhow::Context;
use tokenvault::domain::{ConnectionStatus, IntegrationKey, UserId};
use tokenvault::store::{ConnectionRecord, ListCursor, ListFilter};
use tokenvault::vault::ConnectionView;

use crate::config::Config;
use crate::http::{ConnectionEvent, ListedConnection};
use crate::wiring;

/// Rows fetched per round trip while listing.
const PAGE: u32 = 1000;
/// History entries `connections show` prints.
const SHOWN_EVENTS: u32 = 50;

/// What `connections list` selects.
#[derive(Debug, Default)]
pub struct ListArgs {
    pub status: Option<String>,
    pub integration: Option<String>,
    pub user_id_prefix: Option<String>,
    pub json: bool,
}

fn user(raw: &str) -> anyhow::Result<UserId> {
    UserId::parse(raw).with_context(|| format!("{raw:?} is not a user id"))
}

fn integration(raw: &str) -> anyhow::Result<IntegrationKey> {
    IntegrationKey::parse(raw).with_context(|| format!("{raw:?} is not an integration key"))
}

fn listed(record: &ConnectionRecord) -> ListedConnection {
    ListedConnection {
        id: record.id.to_string(),
        user_id: record.user_id.clone(),
        connection: ConnectionView::from(record),
    }
}

fn time(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Every matching connection, page by page, as a table or one JSON array.
pub async fn list(config: &Config, args: ListArgs) -> anyhow::Result<()> {
    let filter = ListFilter {
        status: args
            .status
            .as_deref()
            .map(|raw| {
                raw.parse::<ConnectionStatus>().map_err(|_| {
                    anyhow::anyhow!(
                        "--status {raw:?} is not one of {}",
                        ConnectionStatus::ALL
                            .map(ConnectionStatus::as_str)
                            .join(", ")
                    )
                })
            })
            .transpose()?,
        integration: args.integration.as_deref().map(integration).transpose()?,
        user_id_prefix: args
            .user_id_prefix
            .as_deref()
            .map(|raw| user(raw).map(|prefix| prefix.as_str().to_owned()))
            .transpose()?,
    };
    let store = wiring::open_store(config).await?;
    let mut after: Option<ListCursor> = None;
    let mut count = 0usize;
    if args.json {
        print!("[");
    } else {
        println!(
            "{:<32}  {:<20}  {:<12}  {:<19}  {:<19}  last error",
            "user", "integration", "status", "expires", "last refreshed"
        );
    }
    loop {
        let page = store.list(&filter, after.as_ref(), PAGE).await?;
        for record in &page {
            if args.json {
                let separator = if count == 0 { "\n  " } else { ",\n  " };
                print!("{separator}{}", serde_json::to_string(&listed(record))?);
            } else {
                println!(
                    "{:<32}  {:<20}  {:<12}  {:<19}  {:<19}  {}",
                    record.user_id.as_str(),
                    record.integration.as_str(),
                    record.status.as_str(),
                    time(record.expires_at),
                    time(record.last_refreshed_at),
                    record
                        .last_error
                        .as_ref()
                        .map(|e| e.code.as_str())
                        .unwrap_or("-"),
                );
            }
            count += 1;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = Some(ListCursor::of(last)),
            _ => break,
        }
    }
    if args.json {
        println!("{}]", if count == 0 { "" } else { "\n" });
    } else {
        eprintln!("{count} connection(s)");
    }
    Ok(())
}

/// One connection's status and its latest history entries.
pub async fn show(config: &Config, user_id: &str, key: &str, json: bool) -> anyhow::Result<()> {
    let (user, key) = (user(user_id)?, integration(key)?);
    let store = wiring::open_store(config).await?;
    let record = store.get(&user, &key).await?;
    let events: Vec<ConnectionEvent> = store
        .history(&user, &key, None, SHOWN_EVENTS)
        .await?
        .into_iter()
        .map(ConnectionEvent::from)
        .collect();
    if record.is_none() && events.is_empty() {
        anyhow::bail!("{user_id} has no {key} connection");
    }
    if json {
        let body = serde_json::json!({
            "connection": record.as_ref().map(listed),
            "events": events,
        });
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    match &record {
        Some(record) => {
            println!("connection   {}", record.id);
            println!("user         {}", record.user_id);
            println!("integration  {}", record.integration);
            println!("status       {}", record.status);
            println!("scopes       {}", record.scopes.format(" "));
            println!("connected    {}", time(Some(record.created_at)));
            println!("expires      {}", time(record.expires_at));
            println!("refreshed    {}", time(record.last_refreshed_at));
            println!("next refresh {}", time(record.next_refresh_at));
            if let Some(error) = &record.last_error {
                println!("last error   {}: {}", error.code, error.message);
            }
        }
        None => println!("no connection (removed by retention); its history:"),
    }
    println!();
    println!("{:<19}  {:<15}  {:<12}  error", "at", "event", "status");
    for event in &events {
        let error = event
            .error
            .as_ref()
            .map(|e| {
                let code = e.code.as_deref().unwrap_or("-");
                match &e.class {
                    Some(class) => format!("{code} ({class})"),
                    None => code.to_owned(),
                }
            })
            .unwrap_or_else(|| "-".into());
        let kind = serde_json::to_value(event.kind)?;
        println!(
            "{:<19}  {:<15}  {:<12}  {error}",
            time(Some(event.at)),
            kind.as_str().unwrap_or_default(),
            event.status.as_str(),
        );
    }
    Ok(())
}

/// Refreshes now (once across all instances), as the API's forced refresh.
pub async fn refresh(config: &Config, user_id: &str, key: &str) -> anyhow::Result<()> {
    let (user, key) = (user(user_id)?, integration(key)?);
    let state = wiring::build_state(config).await?;
    if state.integrations.get(&key).is_none() {
        anyhow::bail!(
            "integration {key} is not configured here: run this with the configuration `serve` uses"
        );
    }
    let issued = state
        .vault
        .force_refresh(&user, &key)
        .await
        .map_err(|err| anyhow::anyhow!("refreshing {user_id}'s {key} connection: {err}"))?;
    let expires = time(issued.connection.expires_at);
    if issued.outcome == tokenvault::refresh::TokenOutcome::Refreshed {
        println!("refreshed {user_id}'s {key} connection: token expires {expires}");
    } else {
        println!(
            "{user_id}'s {key} connection was not refreshed (it has no refresh token, or another refresh just finished); token expires {expires}"
        );
    }
    Ok(())
}

/// Revokes at the provider and erases the tokens, as the API's DELETE.
pub async fn revoke(config: &Config, user_id: &str, key: &str) -> anyhow::Result<()> {
    let (user, key) = (user(user_id)?, integration(key)?);
    let state = wiring::build_state(config).await?;
    let revocation = state
        .vault
        .disconnect(&user, &key)
        .await
        .map_err(|err| anyhow::anyhow!("revoking {user_id}'s {key} connection: {err}"))?;
    match (revocation.revoked_at_provider, revocation.reason) {
        (true, _) => {
            println!("revoked {user_id}'s {key} connection at the provider; tokens erased")
        }
        (false, Some(reason)) => {
            println!("disconnected {user_id}'s {key} connection ({reason}); tokens erased")
        }
        (false, None) => println!("disconnected {user_id}'s {key} connection; tokens erased"),
    }
    Ok(())
}
