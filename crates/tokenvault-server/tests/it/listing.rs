//! Connections across users: the listing, its filters and paging, the
//! summary, and what bad input gets.

use std::collections::BTreeSet;

use crate::common::*;
use serde_json::Value;
use tokenvault::domain::{
    AccessToken, ConnectionStatus, IntegrationKey, RefreshToken, Scopes, TokenSet, TokenType,
    UserId,
};

/// Stores `count` connections to `integration` for users `{prefix}{i:05}`
/// through the vault, as a connect would.
async fn seed(service: &Service, prefix: &str, integration: &str, count: usize) {
    let integration = IntegrationKey::parse(integration).unwrap();
    let vault = &service.state.vault;
    let users: Vec<UserId> = (0..count)
        .map(|i| UserId::parse(format!("{prefix}{i:05}")).unwrap())
        .collect();
    for chunk in users.chunks(64) {
        let writes = chunk.iter().map(|user| {
            let tokens = TokenSet {
                access_token: AccessToken::new("AT-listing"),
                refresh_token: Some(RefreshToken::new("RT-listing")),
                token_type: TokenType::Bearer,
                expires_at: Some(chrono::Utc::now() + chrono::Duration::hours(2)),
                scopes: Scopes::parse("read", " "),
            };
            let integration = integration.clone();
            async move {
                vault
                    .save_grant(
                        user,
                        &integration,
                        &tokens,
                        serde_json::json!({}),
                        chrono::Duration::minutes(5),
                    )
                    .await
                    .unwrap();
            }
        });
        futures::future::join_all(writes).await;
    }
}

async fn mark(service: &Service, user: &str, integration: &str, status: ConnectionStatus) {
    let store = service.state.vault.database();
    let record = store
        .get(
            &UserId::parse(user).unwrap(),
            &IntegrationKey::parse(integration).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let mut update = record.to_update(chrono::Utc::now());
    update.status = status;
    store
        .update(record.id, record.version, &update)
        .await
        .unwrap();
}

/// Every page of `query`, following `next_cursor`.
async fn list_all(service: &Service, query: &str) -> (Vec<Value>, usize) {
    let mut rows = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let cursor = after.map(|c| format!("&after={c}")).unwrap_or_default();
        let response = service
            .get_json(&format!("/v1/connections?{query}{cursor}"))
            .await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        pages += 1;
        rows.extend(page["connections"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return (rows, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_reauth_across_pages_is_exactly_the_dead_connections() {
    let service = start_service(|_, _| {}).await;
    seed(&service, "fan-", "spotify", 9_000).await;
    seed(&service, "user-", "github", 1_000).await;
    let mut dead = BTreeSet::new();
    for i in (0..9_000).step_by(30) {
        let user = format!("fan-{i:05}");
        mark(&service, &user, "spotify", ConnectionStatus::NeedsReauth).await;
        dead.insert(user);
    }
    assert_eq!(dead.len(), 300);

    let (rows, pages) = list_all(&service, "status=needs_reauth&limit=100").await;
    assert_eq!(pages, 4, "three full pages, then an empty last one");
    let listed: BTreeSet<String> = rows
        .iter()
        .map(|row| row["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rows.len(), 300, "no row twice");
    assert_eq!(listed, dead);
    assert!(rows.iter().all(|row| row["status"] == "needs_reauth"
        && row["integration"] == "spotify"
        && row["id"].is_string()));

    let (github, _) = list_all(&service, "integration=github&limit=1000").await;
    assert_eq!(github.len(), 1_000);
    let (prefixed, _) = list_all(&service, "user_id_prefix=fan-0010&limit=7").await;
    assert_eq!(prefixed.len(), 10, "fan-00100 … fan-00109");

    let summary: Value = service
        .get_json("/v1/connections/summary")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(summary["total"], 10_000);
    assert_eq!(summary["by_status"]["needs_reauth"], 300);
    assert_eq!(summary["by_status"]["connected"], 9_700);
    let integrations = summary["integrations"].as_array().unwrap();
    assert_eq!(integrations[0]["integration"], "github");
    assert_eq!(integrations[0]["total"], 1_000);
    assert_eq!(integrations[1]["integration"], "spotify");
    assert_eq!(integrations[1]["by_status"]["needs_reauth"], 300);
    assert_eq!(integrations[1]["by_status"]["connected"], 8_700);
    assert_eq!(summary["failing"], 0);
    // Tokens expire in two hours, refreshed five minutes before: none due
    // within the hour.
    assert_eq!(summary["due_within_1h"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_input_is_validated() {
    let service = start_service(|_, _| {}).await;
    seed(&service, "u-", "spotify", 3).await;
    let cases = [
        ("/v1/connections?status=dead", "invalid_status"),
        ("/v1/connections?status=", "invalid_status"),
        ("/v1/connections?limit=0", "invalid_page"),
        ("/v1/connections?limit=1001", "invalid_page"),
        ("/v1/connections?limit=ten", "invalid_page"),
        ("/v1/connections?after=not-a-cursor!", "invalid_cursor"),
        // Base64 of "no slash here" and of "bad user/spotify".
        ("/v1/connections?after=bm8gc2xhc2ggaGVyZQ", "invalid_cursor"),
        (
            "/v1/connections?after=YmFkIHVzZXIvc3BvdGlmeQ",
            "invalid_cursor",
        ),
        ("/v1/connections?user_id_prefix=a%20b", "invalid_user_id"),
        ("/v1/connections?integration=Spotify", "invalid_integration"),
        ("/v1/connections?limit=1&limit=2", "invalid_query"),
        (
            "/v1/users/u-00000/connections/spotify/events?limit=0",
            "invalid_page",
        ),
        (
            "/v1/users/u-00000/connections/spotify/events?after=xyz",
            "invalid_cursor",
        ),
        (
            "/v1/users/u%20x/connections/spotify/events",
            "invalid_user_id",
        ),
    ];
    for (path, code) in cases {
        let response = service.get_json(path).await;
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
    }
    let limit_one: Value = service
        .get_json("/v1/connections?limit=1&status=connected&integration=spotify")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(limit_one["connections"].as_array().unwrap().len(), 1);
    assert!(limit_one["next_cursor"].is_string());
    // Without a key, nothing is listed.
    for path in ["/v1/connections", "/v1/connections/summary"] {
        let anonymous = reqwest::get(service.url(path)).await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
    }
}
