//! Importing grants from a legacy store, against SQLite and PostgreSQL:
//! created / unchanged / replaced with exactly the writes and events each
//! implies, nothing written on a rejection or a dry run, imported tokens
//! refreshed against a token endpoint, and tokens tokenvault refreshed
//! itself kept over an older export.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use crate::common;
use crate::common::*;
use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::events::{EventType, Events};
use tokenvault::import::{ImportAction, ImportError, ImportOptions, ImportedGrant};
use tokenvault::integrations::{Integration, IntegrationConfig, Integrations};
use tokenvault::oauth::{OAuthClient, OAuthClientConfig};
use tokenvault::providers::Catalog;
use tokenvault::refresh::RefreshSettings;
use tokenvault::store::ConnectionRecord;
use tokenvault::vault::Vault;

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::common::sqlite().await).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::common::postgres().await).await })*
        }
    };
}

conformance!(
    created_unchanged_replaced,
    rejections_and_dry_runs_write_nothing,
    imported_tokens_are_refreshed_and_refreshed_tokens_win_over_an_older_export,
    an_import_waits_for_a_refresh_in_flight_and_decides_against_its_result,
);

const KEYS: &str = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

async fn vault(backend: &Backend) -> Vault {
    let token_url = TokenEndpoint::default().start().await;
    let catalog = Catalog::builtin()
        .merge_toml_str(&format!(
            "[providers.spotify]\ntoken_url = \"{token_url}\"\nrefresh_url = \"{token_url}\"\n"
        ))
        .unwrap();
    let config = IntegrationConfig {
        provider: "spotify".into(),
        client_id: "client".into(),
        client_secret: Some(SecretString::from("secret")),
        redirect_uri: Some(url::Url::parse("https://app.example.com/cb").unwrap()),
        ..IntegrationConfig::default()
    };
    let integrations = Integrations::default();
    integrations.insert(
        Integration::new(
            integration("spotify"),
            &config,
            catalog.get("spotify").unwrap().clone(),
            OAuthClient::new(OAuthClientConfig::default()).unwrap(),
        )
        .unwrap(),
    );
    Vault::builder(Arc::clone(&backend.store), envelope(KEYS))
        .integrations(Arc::new(integrations))
        .events(Events::enabled(BTreeSet::from(EventType::ALL)))
        .refresh_settings(RefreshSettings {
            rate_limit_per_second: None,
            ..RefreshSettings::default()
        })
        .build()
}

fn grant(
    access: &str,
    refresh: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
    metadata: Value,
) -> ImportedGrant {
    ImportedGrant {
        access_token: SecretString::from(access),
        refresh_token: refresh.map(SecretString::from),
        expires_at,
        scopes: vec!["user-read-email".into(), "playlist-read-private".into()],
        metadata,
    }
}

async fn stored(vault: &Vault, user_id: &str) -> Option<ConnectionRecord> {
    vault
        .store()
        .get(&user(user_id), &integration("spotify"))
        .await
        .unwrap()
}

/// (access token, refresh token) as stored, decrypted.
async fn tokens(vault: &Vault, user_id: &str) -> (String, Option<String>) {
    let (_, tokens) = vault
        .read(&user(user_id), &integration("spotify"))
        .await
        .unwrap()
        .expect("connection with tokens");
    (
        tokens.access_token.expose().to_owned(),
        tokens.refresh_token.map(|t| t.expose().to_owned()),
    )
}

async fn pending_events(vault: &Vault) -> u64 {
    vault.database().count_pending_events().await.unwrap()
}

/// Everything a write would change, to prove that none happened.
fn fingerprint(record: &ConnectionRecord) -> (i64, Vec<u8>, Option<Vec<u8>>, Vec<u8>, String) {
    (
        record.version,
        record.access_token.clone().unwrap_or_default(),
        record.refresh_token.clone(),
        record.data_key.blob().to_vec(),
        record.updated_at.to_rfc3339(),
    )
}

async fn created_unchanged_replaced(backend: Backend) {
    let vault = vault(&backend).await;
    let (alice, spotify) = (user("alice"), integration("spotify"));
    let expires = now() + Duration::hours(1);
    let legacy = || grant("AT-1", Some("RT-1"), Some(expires), json!({"legacy_id": 1}));

    let created = vault.import(&alice, &spotify, legacy()).await.unwrap();
    assert_eq!(created.action, ImportAction::Created);
    let view = &created.connection;
    assert_eq!(view.status.as_str(), "connected");
    assert_eq!(view.expires_at, Some(expires));
    assert_eq!(view.scopes, ["playlist-read-private", "user-read-email"]);
    let due = view.next_refresh_at.expect("refreshable and expiring");
    assert!(
        due < expires && due > now(),
        "refreshed before it expires: {due}"
    );
    assert_eq!(
        tokens(&vault, "alice").await,
        ("AT-1".into(), Some("RT-1".into()))
    );
    let first = stored(&vault, "alice").await.unwrap();
    assert_eq!(first.metadata, json!({"legacy_id": 1}));
    assert_eq!(first.last_refreshed_at, None);
    assert_eq!(pending_events(&vault).await, 1, "connection.created");

    // Again: nothing written, no new data key, no event.
    let again = vault.import(&alice, &spotify, legacy()).await.unwrap();
    assert_eq!(again.action, ImportAction::Unchanged);
    assert_eq!(again.connection, created.connection);
    let after = stored(&vault, "alice").await.unwrap();
    assert_eq!(fingerprint(&after), fingerprint(&first));
    assert_eq!(pending_events(&vault).await, 1);

    // Other tokens replace the grant in place, with an event.
    let later = now() + Duration::hours(2);
    let replaced = vault
        .import(
            &alice,
            &spotify,
            grant("AT-2", None, Some(later), json!({"legacy_id": 1})),
        )
        .await
        .unwrap();
    assert_eq!(replaced.action, ImportAction::Replaced);
    assert_eq!(
        replaced.connection.next_refresh_at,
        Some(later),
        "not refreshable: looked at when it expires"
    );
    assert_eq!(tokens(&vault, "alice").await, ("AT-2".into(), None));
    let after = stored(&vault, "alice").await.unwrap();
    assert_eq!(after.id, first.id);
    assert_eq!(after.created_at, first.created_at);
    assert!(after.version > first.version);
    assert_eq!(pending_events(&vault).await, 2);

    // Same tokens, other metadata: the grant is replaced too.
    let metadata = vault
        .import(
            &alice,
            &spotify,
            grant("AT-2", None, Some(later), json!({"legacy_id": 2})),
        )
        .await
        .unwrap();
    assert_eq!(metadata.action, ImportAction::Replaced);
    assert_eq!(
        stored(&vault, "alice").await.unwrap().metadata,
        json!({"legacy_id": 2})
    );
    assert_eq!(pending_events(&vault).await, 3);

    // A disconnected connection (tokens erased) is revived by an import.
    vault.disconnect(&alice, &spotify).await.unwrap();
    assert!(vault.read(&alice, &spotify).await.unwrap().is_none());
    let revived = vault.import(&alice, &spotify, legacy()).await.unwrap();
    assert_eq!(revived.action, ImportAction::Replaced);
    assert_eq!(revived.connection.status.as_str(), "connected");
    assert_eq!(
        tokens(&vault, "alice").await,
        ("AT-1".into(), Some("RT-1".into()))
    );
}

async fn rejections_and_dry_runs_write_nothing(backend: Backend) {
    let vault = vault(&backend).await;
    let (bob, spotify) = (user("bob"), integration("spotify"));
    let expires = now() + Duration::hours(1);
    vault
        .import(
            &bob,
            &spotify,
            grant("AT-1", Some("RT-1"), Some(expires), json!({})),
        )
        .await
        .unwrap();
    let before = fingerprint(&stored(&vault, "bob").await.unwrap());
    let events = pending_events(&vault).await;

    let rejected = [
        grant("AT 2", Some("RT-2"), Some(expires), json!({})),
        grant("AT-2", Some(""), Some(expires), json!({})),
        grant("AT-2", None, Some(now() - Duration::minutes(1)), json!({})),
        grant(
            "AT-2",
            Some("RT-2"),
            Some(now() + Duration::days(4000)),
            json!({}),
        ),
        grant(
            "AT-2",
            Some("RT-2"),
            Some(expires),
            json!(["not", "an", "object"]),
        ),
    ];
    let mut codes = Vec::new();
    for bad in rejected {
        match vault.import(&bob, &spotify, bad).await {
            Err(ImportError::Invalid(invalid)) => codes.push(invalid.code()),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(
        codes,
        [
            "invalid_token",
            "invalid_token",
            "token_expired",
            "invalid_expires_at",
            "invalid_metadata"
        ]
    );
    let mut bad_scopes = grant("AT-2", Some("RT-2"), Some(expires), json!({}));
    bad_scopes.scopes = vec!["a b".into()];
    assert!(matches!(
        vault.import(&bob, &spotify, bad_scopes).await,
        Err(ImportError::Invalid(invalid)) if invalid.code() == "invalid_scopes"
    ));
    let unknown = integration("github");
    assert!(matches!(
        vault
            .import(&bob, &unknown, grant("AT-2", None, None, json!({})))
            .await,
        Err(ImportError::UnknownIntegration(key)) if key == unknown
    ));
    assert!(
        vault.store().get(&bob, &unknown).await.unwrap().is_none(),
        "nothing stored for an unknown integration"
    );

    // Dry runs report what would happen and write nothing.
    let dry = ImportOptions {
        dry_run: true,
        ..ImportOptions::default()
    };
    let would = vault
        .import_with(
            &bob,
            &spotify,
            grant("AT-2", Some("RT-2"), Some(expires), json!({})),
            dry,
        )
        .await
        .unwrap();
    assert_eq!(would.action, ImportAction::Replaced);
    let would_be_same = vault
        .import_with(
            &bob,
            &spotify,
            grant("AT-1", Some("RT-1"), Some(expires), json!({})),
            dry,
        )
        .await
        .unwrap();
    assert_eq!(would_be_same.action, ImportAction::Unchanged);
    let carol = user("carol");
    let would_create = vault
        .import_with(&carol, &spotify, grant("AT-3", None, None, json!({})), dry)
        .await
        .unwrap();
    assert_eq!(would_create.action, ImportAction::Created);
    assert_eq!(would_create.connection.next_refresh_at, None);
    assert!(vault.store().get(&carol, &spotify).await.unwrap().is_none());

    assert_eq!(fingerprint(&stored(&vault, "bob").await.unwrap()), before);
    assert_eq!(
        tokens(&vault, "bob").await,
        ("AT-1".into(), Some("RT-1".into()))
    );
    assert_eq!(pending_events(&vault).await, events);
}

async fn imported_tokens_are_refreshed_and_refreshed_tokens_win_over_an_older_export(
    backend: Backend,
) {
    let vault = vault(&backend).await;
    let (dana, spotify) = (user("dana"), integration("spotify"));
    // Exported after its access token expired: due at once.
    let expired = now() - Duration::minutes(10);
    let export = || grant("AT-old", Some("RT-old"), Some(expired), json!({}));
    let created = vault.import(&dana, &spotify, export()).await.unwrap();
    assert_eq!(created.action, ImportAction::Created);
    assert!(created.connection.next_refresh_at.unwrap() <= now());
    let due = vault
        .store()
        .claim_due(now(), 10, "scheduler", now(), now() + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "the scheduler picks it up at once");
    vault
        .store()
        .release_lease(due[0].id, "scheduler")
        .await
        .unwrap();

    // A caller asking for a token gets it refreshed with the imported
    // refresh token.
    let issued = vault
        .valid_token(&dana, &spotify, StdDuration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(issued.tokens.access_token.expose(), "AT-after-RT-old");
    let refreshed = stored(&vault, "dana").await.unwrap();
    assert!(refreshed.last_refreshed_at.is_some());

    // Re-running the export must not put the spent refresh token back.
    let kept = vault.import(&dana, &spotify, export()).await.unwrap();
    assert_eq!(kept.action, ImportAction::KeptNewer);
    assert_eq!(
        fingerprint(&stored(&vault, "dana").await.unwrap()),
        fingerprint(&refreshed)
    );
    assert_eq!(
        tokens(&vault, "dana").await,
        ("AT-after-RT-old".into(), Some("RT-old-rotated".into()))
    );
    // An export that expires no later than our refreshed token is older too.
    let same_age = grant("AT-x", Some("RT-x"), refreshed.expires_at, json!({}));
    assert_eq!(
        vault
            .import(&dana, &spotify, same_age)
            .await
            .unwrap()
            .action,
        ImportAction::KeptNewer
    );

    // An export refreshed after ours (it expires later) replaces it.
    let newer = grant(
        "AT-newer",
        Some("RT-newer"),
        Some(refreshed.expires_at.unwrap() + Duration::minutes(5)),
        json!({}),
    );
    assert_eq!(
        vault.import(&dana, &spotify, newer).await.unwrap().action,
        ImportAction::Replaced
    );
    assert_eq!(tokens(&vault, "dana").await.0, "AT-newer");

    // `force` replaces even tokens tokenvault refreshed.
    vault.force_refresh(&dana, &spotify).await.unwrap();
    assert_eq!(tokens(&vault, "dana").await.0, "AT-after-RT-newer");
    let force = ImportOptions {
        force: true,
        ..ImportOptions::default()
    };
    let forced = vault
        .import_with(&dana, &spotify, export(), force)
        .await
        .unwrap();
    assert_eq!(forced.action, ImportAction::Replaced);
    assert_eq!(tokens(&vault, "dana").await.0, "AT-old");
}

async fn an_import_waits_for_a_refresh_in_flight_and_decides_against_its_result(backend: Backend) {
    let vault = vault(&backend).await;
    let (erin, spotify) = (user("erin"), integration("spotify"));
    let expires = now() + Duration::hours(1);
    vault
        .import(
            &erin,
            &spotify,
            grant("AT-1", Some("RT-1"), Some(expires), json!({})),
        )
        .await
        .unwrap();
    let record = stored(&vault, "erin").await.unwrap();
    // Another instance is refreshing this connection right now.
    let leased = vault
        .store()
        .acquire_lease(
            record.id,
            "other-instance",
            record.version,
            now(),
            now() + Duration::seconds(10),
        )
        .await
        .unwrap()
        .expect("lease taken");
    let writer = {
        let vault = vault.clone();
        tokio::spawn(async move {
            tokio::time::sleep(StdDuration::from_millis(400)).await;
            let (access, refresh) = vault
                .envelope()
                .reseal(
                    leased.id,
                    &leased.data_key,
                    &tokenvault::domain::AccessToken::new("AT-refreshed"),
                    Some(&tokenvault::domain::RefreshToken::new("RT-refreshed")),
                )
                .await
                .unwrap();
            let now = now();
            let mut update = leased.to_update(now);
            update.access_token = Some(access);
            update.refresh_token = refresh;
            update.expires_at = Some(now + Duration::hours(1));
            update.last_refreshed_at = Some(now);
            update.lease = None;
            vault
                .store()
                .update(leased.id, leased.version, &update)
                .await
                .unwrap();
        })
    };
    let started = Instant::now();
    let outcome = vault
        .import(
            &erin,
            &spotify,
            grant("AT-2", Some("RT-2"), Some(expires), json!({})),
        )
        .await
        .unwrap();
    writer.await.unwrap();
    assert!(
        started.elapsed() >= StdDuration::from_millis(350),
        "waited for the lease"
    );
    assert_eq!(outcome.action, ImportAction::KeptNewer);
    assert_eq!(
        tokens(&vault, "erin").await,
        ("AT-refreshed".into(), Some("RT-refreshed".into()))
    );
}
