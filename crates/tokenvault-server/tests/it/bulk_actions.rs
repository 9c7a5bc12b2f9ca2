//! Bulk actions against a fake Spotify: the pre-save campaign. The API
//! (validation, progress, items, cancel, webhook) on an in-process service;
//! 10,000 fans across a graceful restart and a crash on real `serve`
//! processes.

use std::time::{Duration, Instant};

use crate::common::*;
use chrono::Utc;
use fake_spotify::{FakeSpotify, Options};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::bulk::{BulkError, BulkSettings, BulkSpecInput, BulkWorker, ItemState, RunEnd};
use tokenvault::domain::{AccessToken, IntegrationKey, RefreshToken, TokenSet, TokenType, UserId};
use tokenvault::integrations::IntegrationConfig;
use tokenvault_server::config::Config;

const TRACK: &str = "4uLU6hMCjMI75M1A2tKUQC";
const WEBHOOK_SECRET: &str = "whsec_bulk";

fn spotify_config(fake: &FakeSpotify, base: &str) -> IntegrationConfig {
    IntegrationConfig {
        provider: "spotify".into(),
        client_id: fake.options().client_id.clone(),
        client_secret: Some(SecretString::from(fake.options().client_secret.clone())),
        redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
        ..Default::default()
    }
}

/// Stores a connection for `user` with the fake's first tokens; `expired`
/// makes the stored access token already past its expiry.
async fn seed(vault: &tokenvault::vault::Vault, fake: &FakeSpotify, user: &str, expired: bool) {
    let (access, refresh) = fake.seed(user);
    let expires_at = if expired {
        Utc::now() - chrono::Duration::minutes(5)
    } else {
        Utc::now() + chrono::Duration::hours(1)
    };
    let tokens = TokenSet {
        access_token: AccessToken::new(access),
        refresh_token: Some(RefreshToken::new(refresh)),
        token_type: TokenType::Bearer,
        scopes: ["user-library-modify"].into_iter().collect(),
        expires_at: Some(expires_at),
    };
    vault
        .save_grant(
            &UserId::parse(user).unwrap(),
            &IntegrationKey::parse("spotify").unwrap(),
            &tokens,
            json!({}),
            chrono::Duration::minutes(5),
        )
        .await
        .unwrap();
}

async fn status(http: &reqwest::Client, base: &str, id: &str) -> Value {
    http.get(format!("{base}/v1/bulk-actions/{id}"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls until `done(status)`; panics with the last status after `limit`.
async fn wait_until(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let current = status(http, base, id).await;
        if done(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {current}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_validates_runs_reports_and_cancels_actions_on_sqlite() {
    the_api_validates_runs_reports_and_cancels_actions(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_validates_runs_reports_and_cancels_actions_on_postgres() {
    let database = tokenvault::testing::fresh_postgres_url().await;
    the_api_validates_runs_reports_and_cancels_actions(Some(database)).await;
}

async fn the_api_validates_runs_reports_and_cancels_actions(database: Option<String>) {
    let fake = FakeSpotify::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(&providers, fake.providers_toml()).unwrap();
    let receiver = WebhookReceiver::start().await;
    let webhook_url = receiver.url.clone();
    let service = start_service_with_workers(|config: &mut Config, base| {
        config.providers_file = Some(providers.clone());
        config.database_url = database;
        config.scheduler_enabled = false;
        config.webhook_url = Some(url::Url::parse(&webhook_url).unwrap());
        config.webhook_secret = Some(SecretString::from(WEBHOOK_SECRET));
        config.integrations.insert(
            IntegrationKey::parse("spotify").unwrap(),
            spotify_config(&fake, base),
        );
    })
    .await;
    let fans: Vec<String> = (0..30).map(|i| format!("fan-{i:02}")).collect();
    for (i, fan) in fans.iter().enumerate() {
        seed(&service.state.vault, &fake, fan, i.is_multiple_of(10)).await;
    }
    fake.mark_stale("fan-05");
    let request = json!({"method": "PUT", "path": "me/tracks", "query": {"ids": TRACK}});

    // Bad input: 400 with the field named, nothing created.
    for (body, field) in [
        (
            json!({"integration": "nope", "users": ["a"], "request": request}),
            "integration",
        ),
        (
            json!({"integration": "spotify", "users": [], "request": request}),
            "users",
        ),
        (
            json!({"integration": "spotify", "users": ["a b"], "request": request}),
            "users",
        ),
        (
            json!({"integration": "spotify", "users": {"status": "happy"}, "request": request}),
            "users.status",
        ),
        (
            json!({"integration": "spotify", "users": ["a"], "request": {"method": "PUT", "path": "//evil.example/x"}}),
            "request.path",
        ),
        (
            json!({"integration": "spotify", "users": ["a"], "request": {"method": "PUT", "path": "%2e%2e/x"}}),
            "request.path",
        ),
        (
            json!({"integration": "spotify", "users": ["a"], "request": request, "not_before": "tomorrow"}),
            "not_before",
        ),
        (
            json!({"integration": "spotify", "users": ["a"], "request": request, "rate_per_second": 0}),
            "rate_per_second",
        ),
    ] {
        let response = service.post_json("/v1/bulk-actions", body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "invalid_bulk_action");
        assert!(
            error["message"].as_str().unwrap().starts_with(field),
            "{error}"
        );
    }
    let unknown = service
        .get_json("/v1/bulk-actions/0190a0b2-0000-7000-8000-000000000000")
        .await;
    assert_eq!(unknown.status(), 404);
    let malformed = service.get_json("/v1/bulk-actions/not-an-id").await;
    assert_eq!(malformed.status(), 400);

    // The campaign: 30 connected fans (3 with expired tokens, one the
    // provider considers stale) plus 2 who never connected, one listed twice.
    let mut users: Vec<String> = fans.clone();
    users.extend(["never-1".into(), "never-2".into(), "fan-00".into()]);
    let created = service
        .post_json(
            "/v1/bulk-actions",
            json!({"integration": "spotify", "users": users, "request": request, "rate_per_second": 40}),
        )
        .await;
    assert_eq!(created.status(), 202);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["total"], 32, "duplicates are dropped: {created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let done = wait_until(
        &service.http,
        &service.base,
        &id,
        Duration::from_secs(60),
        |s| s["state"] == "completed",
    )
    .await;
    assert_eq!(done["counts"]["succeeded"], 30, "{done}");
    assert_eq!(done["counts"]["skipped"], 2, "{done}");
    assert_eq!(done["eta_seconds"], Value::Null);
    for fan in &fans {
        assert!(fake.has_saved(fan, TRACK), "{fan}");
    }
    assert!(fake.save_calls().values().all(|calls| *calls == 1));
    // Expired tokens and the stale one were refreshed, once each.
    for fan in ["fan-00", "fan-10", "fan-20", "fan-05"] {
        assert_eq!(fake.refreshes(fan), 1, "{fan}");
    }
    assert_eq!(fake.total_refreshes(), 4);

    // Per-user outcomes, paged.
    let skipped: Value = service
        .get_json(&format!("/v1/bulk-actions/{id}/items?state=skipped"))
        .await
        .json()
        .await
        .unwrap();
    let skipped_users: Vec<&str> = skipped["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(skipped_users, ["never-1", "never-2"]);
    assert_eq!(skipped["items"][0]["error"]["code"], "not_connected");
    assert_eq!(skipped["items"][0]["attempts"], 1);
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = service
            .get_json(&format!("/v1/bulk-actions/{id}/items?limit=10{after}"))
            .await
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["user_id"].as_str().unwrap().to_owned());
            if item["state"] == "succeeded" {
                assert_eq!(item["status"], 200);
            }
        }
        match page["next_after"].as_i64() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 32);
    for (query, code) in [
        ("state=done", "invalid_item_state"),
        ("limit=0", "invalid_page"),
        ("after=-1", "invalid_page"),
    ] {
        let response = service
            .get_json(&format!("/v1/bulk-actions/{id}/items?{query}"))
            .await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], code);
    }

    // The webhook says so, once.
    let event = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "bulk_action.completed",
            1,
            Duration::from_secs(10),
        )
        .await
        .remove(0);
    assert_eq!(event["data"]["id"], id.as_str());
    assert_eq!(event["data"]["state"], "completed");
    assert_eq!(event["data"]["counts"]["succeeded"], 30);

    // A scheduled action can be cancelled before it sends anything.
    let calls_before = fake.statuses().values().sum::<u64>();
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled: Value = service
        .post_json(
            "/v1/bulk-actions",
            json!({"integration": "spotify", "users": {"status": "connected"}, "request": request, "not_before": later}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(scheduled["state"], "scheduled");
    assert_eq!(scheduled["total"], 30);
    let scheduled_id = scheduled["id"].as_str().unwrap();
    let cancelled = service
        .post_json(
            &format!("/v1/bulk-actions/{scheduled_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["counts"]["cancelled"], 30);
    let again = service
        .post_json(
            &format!("/v1/bulk-actions/{scheduled_id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.json::<Value>().await.unwrap()["error"],
        "bulk_action_finished"
    );
    let event = receiver
        .wait_for(
            WEBHOOK_SECRET,
            "bulk_action.completed",
            2,
            Duration::from_secs(10),
        )
        .await
        .remove(1);
    assert_eq!(event["data"]["state"], "cancelled");
    // Stopping waits for every worker to end: anything the cancelled action
    // would still send has been sent by then.
    service.stop().await;
    assert_eq!(
        fake.statuses().values().sum::<u64>(),
        calls_before,
        "a cancelled action sent requests"
    );
}

/// A `serve` process on its own port over `dir`'s SQLite database.
async fn serve(config: &std::path::Path, dir: &std::path::Path) -> (Process, String) {
    let port = free_port();
    let process = Process::spawn(
        config,
        dir,
        &[
            ("TOKENVAULT_MASTER_KEYS", MASTER_KEYS.to_owned()),
            ("TOKENVAULT_API_KEYS", API_KEY.to_owned()),
            ("TOKENVAULT_METRICS_BIND", "off".to_owned()),
            ("TOKENVAULT_BIND", format!("127.0.0.1:{port}")),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{base}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "serve did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (process, base)
}

/// The service's state as `serve` builds it from `config` (no workers).
async fn library_state(
    config: &std::path::Path,
    data_dir: &std::path::Path,
) -> tokenvault_server::http::AppState {
    let mut settings = Config::load(Some(config)).unwrap();
    settings.data_dir = data_dir.to_path_buf();
    settings.master_keys = Some(SecretString::from(MASTER_KEYS));
    tokenvault_server::wiring::build_state(&settings)
        .await
        .unwrap()
}

struct Campaign {
    fake: FakeSpotify,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    http: reqwest::Client,
}

/// `fans` connected fans in a fresh SQLite database: every 50th with an
/// expired token, every 33rd stale at the provider; the fake answers every
/// 20th API call with 429 (Retry-After: 1).
async fn campaign(fans: usize) -> Campaign {
    campaign_on(fans, None).await
}

/// [`campaign`] on PostgreSQL at `database` instead of SQLite.
async fn campaign_on(fans: usize, database: Option<&str>) -> Campaign {
    let fake = FakeSpotify::start(Options {
        rate_limit_every: Some(20),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(&providers, fake.providers_toml()).unwrap();
    let config = dir.path().join("tokenvault.toml");
    std::fs::write(
        &config,
        format!(
            "{}providers_file = {providers:?}\npublic_url = \"http://127.0.0.1:9\"\nscheduler_enabled = false\nrefresh_rate_limit_per_second = 0\n\n\
             [integrations.spotify]\nprovider = \"spotify\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
             redirect_uri = \"http://127.0.0.1:9/oauth/callback\"\n",
            database.map_or(String::new(), |url| format!("database_url = {url:?}\n")),
            fake.options().client_id,
            fake.options().client_secret
        ),
    )
    .unwrap();
    // Seed through the library on the database the processes will use.
    let state = library_state(&config, dir.path()).await;
    let fans: Vec<String> = (0..fans).map(|i| format!("fan-{i:05}")).collect();
    futures::future::join_all(fans.chunks(fans.len().div_ceil(8)).map(|chunk| {
        let vault = state.vault.clone();
        let fake = fake.clone();
        async move {
            for fan in chunk {
                let n: usize = fan[4..].parse().unwrap();
                seed(&vault, &fake, fan, n.is_multiple_of(50)).await;
                if n.is_multiple_of(33) && !n.is_multiple_of(50) {
                    fake.mark_stale(fan);
                }
            }
        }
    }))
    .await;
    Campaign {
        fake,
        dir,
        config,
        http: reqwest::Client::new(),
    }
}

impl Campaign {
    async fn start(&self, base: &str, rate: u32) -> String {
        let created: Value = self
            .http
            .post(format!("{base}/v1/bulk-actions"))
            .bearer_auth(API_KEY)
            .json(&json!({
                "integration": "spotify",
                "users": {"status": "connected"},
                "request": {"method": "PUT", "path": "me/tracks", "query": {"ids": TRACK}},
                "rate_per_second": rate,
            }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{created}"))
            .to_owned()
    }

    /// Every item of the action, through the paged API.
    async fn items(&self, base: &str, id: &str) -> Vec<Value> {
        self.paged(base, id, "").await
    }

    /// The action's items in one state.
    async fn items_in(&self, base: &str, id: &str, state: &str) -> Vec<Value> {
        self.paged(base, id, &format!("&state={state}")).await
    }

    async fn paged(&self, base: &str, id: &str, filter: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut after = String::new();
        loop {
            let page: Value = self
                .http
                .get(format!(
                    "{base}/v1/bulk-actions/{id}/items?limit=1000{filter}{after}"
                ))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            items.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_after"].as_i64() {
                Some(next) => after = format!("&after={next}"),
                None => return items,
            }
        }
    }

    /// What every campaign must end with, whatever happened in between.
    fn check_provider_side(&self, fans: usize, rate: usize) {
        assert!(
            self.fake.max_calls_in_any_second() <= rate,
            "the provider saw {} calls within one second (rate {rate})",
            self.fake.max_calls_in_any_second()
        );
        assert!(self.fake.statuses()[&429] > 0, "no 429 was exercised");
        assert_eq!(self.fake.replayed_refresh_tokens(), 0);
        for n in 0..fans {
            let fan = format!("fan-{n:05}");
            assert!(self.fake.has_saved(&fan, TRACK), "{fan} not saved");
            let expected = u64::from(n.is_multiple_of(50) || n.is_multiple_of(33));
            assert_eq!(self.fake.refreshes(&fan), expected, "refreshes of {fan}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_runs_the_action_it_is_asked_to_and_only_once_on_sqlite() {
    the_library_runs_the_action_it_is_asked_to_and_only_once(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_runs_the_action_it_is_asked_to_and_only_once_on_postgres() {
    let database = tokenvault::testing::fresh_postgres_url().await;
    the_library_runs_the_action_it_is_asked_to_and_only_once(Some(&database)).await;
}

async fn the_library_runs_the_action_it_is_asked_to_and_only_once(database: Option<&str>) {
    const FANS: usize = 40;
    const OTHER_TRACK: &str = "0000000000000000000000";
    let campaign = campaign_on(FANS, database).await;
    let state = library_state(&campaign.config, campaign.dir.path()).await;
    let spec = |track: &str| {
        let input: BulkSpecInput = serde_json::from_value(json!({
            "integration": "spotify",
            "users": {"status": "connected"},
            "request": {"method": "PUT", "path": "me/tracks", "query": {"ids": track}},
            "rate_per_second": 1000,
        }))
        .unwrap();
        state.bulk.parse(&input).unwrap()
    };
    // An older runnable action that nobody asked this worker to run.
    let older = state.bulk.create(spec(OTHER_TRACK), None).await.unwrap();
    let worker = BulkWorker::new(state.bulk.clone(), BulkSettings::default());
    let asked = worker.create(spec(TRACK)).await.unwrap();
    let (_stop, stopping) = tokio::sync::watch::channel(false);

    let end = worker.run(asked.id, stopping.clone()).await.unwrap();
    assert_eq!(end, RunEnd::Completed);
    let done = state.bulk.status(asked.id).await.unwrap();
    assert_eq!(done.counts[&ItemState::Succeeded], FANS as u64);
    let started = done.started_at.expect("marked started");
    assert!(
        started >= asked.created_at && started <= Utc::now(),
        "started_at {started} is not when the run started"
    );
    let untouched = state.bulk.status(older.id).await.unwrap();
    assert_eq!(untouched.counts[&ItemState::Pending], FANS as u64);
    assert_eq!(untouched.started_at, None);
    for n in 0..FANS {
        let fan = format!("fan-{n:05}");
        assert!(campaign.fake.has_saved(&fan, TRACK), "{fan}");
        assert!(!campaign.fake.has_saved(&fan, OTHER_TRACK), "{fan}");
    }

    // Asked again: it is finished, nothing is sent twice.
    let again = worker.run(asked.id, stopping.clone()).await.unwrap();
    assert_eq!(again, RunEnd::Completed);
    assert!(campaign.fake.save_calls().values().all(|n| *n == 1));
    assert!(matches!(
        worker.run(uuid::Uuid::now_v7(), stopping).await,
        Err(BulkError::NotFound)
    ));
}

/// Runs `tokenvault --config … <args>` to the end, off this runtime (the
/// fake provider the command talks to runs on it).
async fn cli(campaign: &Campaign, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tokenvault"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOKENVAULT_DATA_DIR", campaign.dir.path())
        .env("TOKENVAULT_MASTER_KEYS", MASTER_KEYS)
        .env("TOKENVAULT_METRICS_BIND", "off")
        .arg("--config")
        .arg(&campaign.config)
        .args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_a_spec_file_and_reports_per_state() {
    const FANS: usize = 25;
    let campaign = campaign(FANS).await;
    let spec = campaign.dir.path().join("presave.json");
    let mut users: Vec<String> = (0..FANS).map(|n| format!("fan-{n:05}")).collect();
    users.push("never-connected".into());
    std::fs::write(
        &spec,
        json!({
            "integration": "spotify",
            "users": users,
            "request": {"method": "PUT", "path": "me/tracks", "query": {"ids": TRACK}},
            "rate_per_second": 500,
        })
        .to_string(),
    )
    .unwrap();

    let run = cli(&campaign, &["bulk", "run", spec.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    // One user has no connection: skipped, so not every item succeeded.
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("0 item(s) failed and 1 were skipped"),
        "{stderr}"
    );
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(summary.contains("26 of 26 done"), "{summary}");
    assert!(summary.contains("succeeded 25"), "{summary}");
    let id = stderr
        .split_whitespace()
        .skip_while(|word| *word != "action")
        .nth(1)
        .unwrap_or_else(|| panic!("no action id in {stderr}"))
        .to_owned();
    for n in 0..FANS {
        assert!(campaign.fake.has_saved(&format!("fan-{n:05}"), TRACK));
    }

    let status = cli(&campaign, &["bulk", "status", &id, "--json"]).await;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let view: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(view["state"], "completed");
    assert_eq!(view["counts"]["succeeded"], FANS);
    assert_eq!(view["counts"]["skipped"], 1);

    // Resuming a finished action sends nothing and reports it again.
    let calls = campaign.fake.statuses().values().sum::<u64>();
    let resumed = cli(&campaign, &["bulk", "resume", &id]).await;
    assert_eq!(resumed.status.code(), Some(2));
    assert_eq!(campaign.fake.statuses().values().sum::<u64>(), calls);

    let unknown = cli(&campaign, &["bulk", "status", "not-an-id"]).await;
    assert!(!unknown.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_fans_are_each_saved_exactly_once_across_a_restart() {
    const FANS: usize = 10_000;
    const RATE: usize = 400;
    let campaign = campaign(FANS).await;
    let (mut first, base) = serve(&campaign.config, campaign.dir.path()).await;
    let id = campaign.start(&base, RATE as u32).await;
    let halfway = wait_until(&campaign.http, &base, &id, Duration::from_secs(300), |s| {
        s["counts"]["succeeded"].as_u64().unwrap() >= FANS as u64 / 2
    })
    .await;
    assert!(halfway["eta_seconds"].as_u64().is_some(), "{halfway}");
    // Stopped halfway (SIGTERM): requests in flight finish and are
    // recorded, the lease is released, the rest waits. Waited for off this
    // runtime: the fake provider the drain needs runs on it.
    let stopped = tokio::task::spawn_blocking(move || first.terminate());
    assert!(stopped.await.unwrap().success());
    let saved_before_restart = campaign.fake.save_calls().len();
    assert!(
        saved_before_restart < FANS,
        "the first process finished everything before it was stopped"
    );

    let (_second, base) = serve(&campaign.config, campaign.dir.path()).await;
    let done = wait_until(&campaign.http, &base, &id, Duration::from_secs(300), |s| {
        s["state"] == "completed"
    })
    .await;
    let failed = campaign.items_in(&base, &id, "failed").await;
    assert!(failed.is_empty(), "failed items: {failed:?}");
    assert_eq!(done["counts"]["succeeded"], FANS, "{done}");

    let saves = campaign.fake.save_calls();
    assert_eq!(saves.len(), FANS);
    let duplicated: Vec<_> = saves.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        duplicated.is_empty(),
        "saved more than once: {duplicated:?}"
    );
    campaign.check_provider_side(FANS, RATE);
    // A graceful stop leaves nothing in flight for the next run to resend.
    let items = campaign.items(&base, &id).await;
    assert_eq!(items.len(), FANS);
    let interrupted: Vec<_> = items.iter().filter(|i| i["interrupted"] != 0).collect();
    assert!(interrupted.is_empty(), "{interrupted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_run_resends_only_the_requests_that_were_in_flight_on_sqlite() {
    a_crash_mid_run_resends_only_the_requests_that_were_in_flight(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_run_resends_only_the_requests_that_were_in_flight_on_postgres() {
    let database = tokenvault::testing::fresh_postgres_url().await;
    a_crash_mid_run_resends_only_the_requests_that_were_in_flight(Some(&database)).await;
}

async fn a_crash_mid_run_resends_only_the_requests_that_were_in_flight(database: Option<&str>) {
    const FANS: usize = 1_000;
    const RATE: usize = 200;
    let campaign = campaign_on(FANS, database).await;
    let (mut first, base) = serve(&campaign.config, campaign.dir.path()).await;
    let id = campaign.start(&base, RATE as u32).await;
    wait_until(&campaign.http, &base, &id, Duration::from_secs(120), |s| {
        s["counts"]["succeeded"].as_u64().unwrap() >= 400
    })
    .await;
    first.kill();

    // The dead runner's lease must run out (30 s) before another takes over.
    let (_second, base) = serve(&campaign.config, campaign.dir.path()).await;
    let done = wait_until(&campaign.http, &base, &id, Duration::from_secs(180), |s| {
        s["state"] == "completed"
    })
    .await;
    assert_eq!(done["counts"]["succeeded"], FANS, "{done}");
    campaign.check_provider_side(FANS, RATE);

    // A fan saved twice is exactly one whose request was at the provider
    // when the process died (PUT is idempotent, so it was sent again); at
    // most one per request in flight.
    let items = campaign.items(&base, &id).await;
    let saves = campaign.fake.save_calls();
    let mut resent = 0;
    for item in &items {
        let user = item["user_id"].as_str().unwrap();
        let interrupted = item["interrupted"].as_u64().unwrap();
        resent += interrupted;
        assert!(
            saves[user] == 1 || (saves[user] == 2 && interrupted == 1),
            "{user}: {} saves, item {item}",
            saves[user]
        );
    }
    assert!(
        resent <= 16,
        "{resent} items were in flight at the crash; concurrency is 16"
    );
}
