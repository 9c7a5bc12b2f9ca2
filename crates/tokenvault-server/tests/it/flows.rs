//! The browser flows against a real authorization server (oidc-provider on
//! loopback): every client authentication method, and every way a callback
//! can go wrong without creating a connection.

use crate::common::*;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokenvault::domain::{ConnectionStatus, IntegrationKey, UserId};
use tokenvault::integrations::IntegrationConfig;
use tokenvault_server::config::Config;

pub(crate) const APP_ORIGIN: &str = "http://app.test";

/// Three integrations on the peer: a public client with PKCE, confidential
/// clients with client_secret_basic and client_secret_post.
pub(crate) async fn setup(peer: &Peer, tweak: impl FnOnce(&mut Config)) -> Service {
    setup_with(peer, tweak, |overrides| {
        overrides.without_background_work = true
    })
    .await
}

/// [`setup`] with the app's [`Overrides`] chosen by the test.
async fn setup_with(
    peer: &Peer,
    tweak: impl FnOnce(&mut Config),
    overrides: impl FnOnce(&mut Overrides),
) -> Service {
    let providers = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        providers.path(),
        "[providers.peer-public]\nalias = \"oidc\"\ntoken_auth_method = \"none\"\n\n\
         [providers.peer-post]\nalias = \"oidc\"\ntoken_auth_method = \"client_secret_post\"\n",
    )
    .unwrap();
    let issuer = peer.issuer.clone();
    let service = start_app(
        |config, base| {
            let redirect = url::Url::parse(&format!("{base}/oauth/callback")).unwrap();
            let integration =
                |provider: &str, client_id: &str, secret: Option<&str>| IntegrationConfig {
                    provider: provider.into(),
                    client_id: client_id.into(),
                    client_secret: secret.map(SecretString::from),
                    redirect_uri: Some(redirect.clone()),
                    scopes: Some(vec![
                        "openid".into(),
                        "offline_access".into(),
                        "api:read".into(),
                    ]),
                    issuer: Some(url::Url::parse(&issuer).unwrap()),
                    ..Default::default()
                };
            config.providers_file = Some(providers.path().to_path_buf());
            config.integrations.insert(
                IntegrationKey::parse("pkce-app").unwrap(),
                integration("peer-public", "pkce-app", None),
            );
            config.integrations.insert(
                IntegrationKey::parse("basic-app").unwrap(),
                integration("oidc", "basic-app", Some("basic-secret")),
            );
            config.integrations.insert(
                IntegrationKey::parse("post-app").unwrap(),
                integration("peer-post", "post-app", Some("post-secret")),
            );
            config.allowed_redirect_origins = vec![APP_ORIGIN.into()];
            tweak(config);
        },
        overrides,
    )
    .await;
    let callback = service.url("/oauth/callback");
    let code_and_refresh = ["authorization_code", "refresh_token"];
    peer.register("pkce-app", "none", None, &callback, &code_and_refresh)
        .await;
    peer.register(
        "basic-app",
        "client_secret_basic",
        Some("basic-secret"),
        &callback,
        &["authorization_code", "refresh_token", "client_credentials"],
    )
    .await;
    peer.register(
        "post-app",
        "client_secret_post",
        Some("post-secret"),
        &callback,
        &code_and_refresh,
    )
    .await;
    service
}

/// A browser (it keeps cookies) that stops before our callback.
fn stopping_browser(service: &Service) -> reqwest::Client {
    browser(Some(service.url("/oauth/")))
}

/// Runs the flow in `browser` up to (not into) our callback; returns its
/// URL. The callback must be opened in the same browser: the flow is bound
/// to it by a cookie.
async fn callback_url(
    service: &Service,
    browser: &reqwest::Client,
    user: &str,
    integration: &str,
) -> String {
    let connect = service.connect_url(user, integration, None).await;
    let response = browser.get(connect).send().await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    location(&response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_authentication_method_ends_connected_with_working_tokens() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    for integration in ["pkce-app", "basic-app", "post-app"] {
        let user = format!("user-{integration}");
        let connect = service.connect_url(&user, integration, None).await;
        let page = browser(None).get(connect).send().await.unwrap();
        assert_eq!(page.status(), 200, "{integration}");
        assert!(page.text().await.unwrap().contains("connected"));

        let (record, tokens) = service
            .state
            .vault
            .read(
                &UserId::parse(user.as_str()).unwrap(),
                &IntegrationKey::parse(integration).unwrap(),
            )
            .await
            .unwrap()
            .expect("connection stored");
        assert_eq!(record.status, ConnectionStatus::Connected, "{integration}");
        assert!(
            tokens.refresh_token.is_some(),
            "{integration}: refresh token kept"
        );
        assert!(
            tokens.scopes.includes("api:read"),
            "{integration}: {:?}",
            tokens.scopes
        );
        assert!(record.expires_at.is_some() && record.next_refresh_at.is_some());
        // The decrypted access token is the peer's: its userinfo accepts it.
        let key = IntegrationKey::parse(integration).unwrap();
        let profile = service
            .state
            .integrations
            .get(&key)
            .unwrap()
            .userinfo(&tokens.access_token)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(profile.id, "test-user");
    }
    let stats = peer.stats().await;
    assert_eq!(stats["token_successes"]["authorization_code"], 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_gets_the_outcome_and_must_be_an_allowed_origin() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let connect = service
        .connect_url("u1", "pkce-app", Some("http://app.test/done?x=1"))
        .await;
    let response = browser(Some(APP_ORIGIN.into()))
        .get(connect)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        location(&response),
        "http://app.test/done?x=1&connection=pkce-app&status=connected"
    );

    let refused = service
        .post_json("/v1/connect-sessions", json!({"user_id": "u1", "integration": "pkce-app", "redirect_to": "https://evil.test/x"}))
        .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "invalid_redirect_to"
    );

    // Denied at the provider: the app hears about it, no connection is made.
    peer.hook("config", json!({"interaction": "deny"})).await;
    let connect = service
        .connect_url("u2", "pkce-app", Some("http://app.test/done"))
        .await;
    let response = browser(Some(APP_ORIGIN.into()))
        .get(connect)
        .send()
        .await
        .unwrap();
    assert_eq!(
        location(&response),
        "http://app.test/done?connection=pkce-app&status=error&error=access_denied"
    );
    assert!(!connection_exists(&service, "u2", "pkce-app").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callbacks_get_their_documented_errors_and_create_nothing() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let http = stopping_browser(&service);
    let error_of = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body["error"].as_str().unwrap().to_owned())
    };

    // Replay: the first use connects, the second is refused.
    let callback = callback_url(&service, &http, "replay", "pkce-app").await;
    assert_eq!(http.get(&callback).send().await.unwrap().status(), 200);
    assert_eq!(
        error_of(http.get(&callback).send().await.unwrap()).await,
        (400, "invalid_state".into())
    );

    // A state issued for pkce-app presented on basic-app's callback.
    let callback = callback_url(&service, &http, "mismatch", "pkce-app").await;
    let other = callback.replace("/oauth/callback", "/oauth/basic-app/callback");
    assert_eq!(
        error_of(http.get(&other).send().await.unwrap()).await,
        (400, "state_mismatch".into())
    );
    assert!(!connection_exists(&service, "mismatch", "pkce-app").await);
    assert!(!connection_exists(&service, "mismatch", "basic-app").await);

    // No code.
    let callback = callback_url(&service, &http, "nocode", "pkce-app").await;
    let mut url = url::Url::parse(&callback).unwrap();
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
            .into_owned()
    };
    let (state, iss) = (param("state"), param("iss"));
    url.query_pairs_mut()
        .clear()
        .append_pair("state", &state)
        .append_pair("iss", &iss);
    assert_eq!(
        error_of(http.get(url.as_str()).send().await.unwrap()).await,
        (400, "missing_code".into())
    );
    assert!(!connection_exists(&service, "nocode", "pkce-app").await);

    // The peer advertises RFC 9207: a callback without (or with a wrong) iss is refused.
    for iss in [None, Some("http://attacker.test")] {
        let callback = callback_url(&service, &http, "mixup", "pkce-app").await;
        let mut url = url::Url::parse(&callback).unwrap();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "iss")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(kept);
        if let Some(iss) = iss {
            url.query_pairs_mut().append_pair("iss", iss);
        }
        assert_eq!(
            error_of(http.get(url.as_str()).send().await.unwrap()).await,
            (400, "issuer_mismatch".into())
        );
        assert!(!connection_exists(&service, "mixup", "pkce-app").await);
    }

    // Unknown or absent state.
    assert_eq!(
        error_of(
            http.get(service.url("/oauth/callback?code=x&state=nope"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (400, "invalid_state".into())
    );
    assert_eq!(
        error_of(
            http.get(service.url("/oauth/callback?code=x"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (400, "invalid_state".into())
    );

    // access_denied without redirect_to: a JSON error.
    peer.hook("config", json!({"interaction": "deny"})).await;
    let callback = callback_url(&service, &http, "denied", "pkce-app").await;
    assert_eq!(
        error_of(http.get(&callback).send().await.unwrap()).await,
        (400, "access_denied".into())
    );
    assert!(!connection_exists(&service, "denied", "pkce-app").await);

    // A connect link works once.
    let connect = service.connect_url("once", "pkce-app", None).await;
    browser(Some(service.url("/oauth/")))
        .get(&connect)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(http.get(&connect).send().await.unwrap()).await,
        (400, "invalid_state".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_state_is_refused() {
    let peer = Peer::start();
    let service = setup(&peer, |config| config.state_ttl_secs = 1).await;
    let http = stopping_browser(&service);
    let callback = callback_url(&service, &http, "late", "pkce-app").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let response = reqwest::get(&callback).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_state"
    );
    assert!(!connection_exists(&service, "late", "pkce-app").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_session_input_is_validated() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let cases = [
        (
            json!({"user_id": "a b", "integration": "pkce-app"}),
            400,
            "invalid_user_id",
        ),
        (
            json!({"user_id": "u", "integration": "nope"}),
            404,
            "unknown_integration",
        ),
        (json!({"user_id": "u"}), 400, "invalid_integration"),
        (
            json!({"user_id": "u", "integration": "pkce-app", "integrations": ["pkce-app", "basic-app"]}),
            400,
            "invalid_integration",
        ),
        (
            json!({"user_id": "u", "integrations": ["pkce-app", "pkce-app"]}),
            400,
            "invalid_integration",
        ),
        (
            json!({"user_id": "u", "integrations": []}),
            400,
            "invalid_integration",
        ),
        (
            json!({"user_id": "u", "integrations": ["pkce-app", "nope"]}),
            404,
            "unknown_integration",
        ),
        (
            json!({"user_id": "u", "integration": "pkce-app", "connect_ui": "fancy"}),
            400,
            "invalid_json",
        ),
        (
            json!({"user_id": "u", "integration": "pkce-app", "scopes": ["a b"]}),
            400,
            "invalid_scopes",
        ),
        (
            json!({"user_id": "u", "integration": "pkce-app", "scopes": 5}),
            400,
            "invalid_json",
        ),
    ];
    for (body, status, code) in cases {
        let response = service
            .post_json("/v1/connect-sessions", body.clone())
            .await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], code, "{body}: {error}");
    }
    let missing_field: Value = service
        .post_json("/v1/connect-sessions", json!({"user_id": "u"}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        missing_field["message"]
            .as_str()
            .unwrap()
            .contains("integration"),
        "{missing_field}"
    );

    // Scopes as one space-separated string, as import takes them.
    let created = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "u", "integration": "pkce-app", "scopes": " openid  email "}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let link = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(created["connect_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(link.status(), 302);
    let location = url::Url::parse(link.headers()["location"].to_str().unwrap()).unwrap();
    let scope = location
        .query_pairs()
        .find(|(name, _)| name == "scope")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let mut requested: Vec<&str> = scope.split(' ').collect();
    requested.sort_unstable();
    assert_eq!(requested, ["email", "openid"], "{location}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_providers_and_app_tokens() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let integrations: Value = service
        .get_json("/v1/integrations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys_of(&integrations, "integrations"),
        ["basic-app", "pkce-app", "post-app"]
    );
    let providers: Value = service
        .get_json("/v1/providers")
        .await
        .json()
        .await
        .unwrap();
    let provider_keys = keys_of(&providers, "providers");
    for expected in ["spotify", "google", "github", "wix", "oidc"] {
        assert!(provider_keys.contains(&expected), "{provider_keys:?}");
    }

    // Client credentials: fetched once, then served from cache.
    let first: Value = service
        .get_json("/v1/integrations/basic-app/token")
        .await
        .json()
        .await
        .unwrap();
    let second: Value = service
        .get_json("/v1/integrations/basic-app/token")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        first["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{first}"
    );
    assert_eq!(first["access_token"], second["access_token"]);
    assert_eq!(
        peer.stats().await["token_successes"]["client_credentials"],
        1
    );
    let unknown = service.get_json("/v1/integrations/nope/token").await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_store_outage_is_a_503_not_a_crash() {
    let peer = Peer::start();
    let service = setup(&peer, |config| {
        config.redis_url = Some("redis://127.0.0.1:1".into())
    })
    .await;
    let response = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "u", "integration": "pkce-app"}),
        )
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "state_store_unavailable"
    );
    let callback = reqwest::get(
        service.url("/oauth/callback?code=x&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    )
    .await
    .unwrap();
    assert_eq!(callback.status(), 503);
    // Degraded, not unready: token reads still work, and a balancer that
    // followed /readyz would otherwise drop every instance at once.
    let ready = reqwest::get(service.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready = ready.json::<Value>().await.unwrap();
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["checks"]["state_store"]["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_states_are_purged_from_the_database() {
    let peer = Peer::start();
    let clock = std::sync::Arc::new(tokenvault::domain::ManualClock::new(chrono::Utc::now()));
    let service = setup_with(
        &peer,
        |config| {
            config.state_ttl_secs = 60;
            config.scheduler_enabled = false;
            config.bulk_enabled = false;
        },
        |overrides| {
            overrides.clock = Some(clock.clone());
            overrides.ticks.state_purge = Some(std::time::Duration::from_millis(20));
        },
    )
    .await;
    service.connect_url("abandoned", "pkce-app", None).await;
    assert_eq!(stored_states(&service).await, 1);
    clock.advance(chrono::Duration::seconds(61));
    // The background purger removes the expired row without being asked.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored_states(&service).await > 0 {
        assert!(std::time::Instant::now() < deadline, "the purger never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_purger_expired_states_stay_until_purged() {
    let peer = Peer::start();
    let clock = std::sync::Arc::new(tokenvault::domain::ManualClock::new(chrono::Utc::now()));
    let service = setup_with(
        &peer,
        |config| config.state_ttl_secs = 60,
        |overrides| {
            overrides.clock = Some(clock.clone());
            overrides.without_background_work = true;
        },
    )
    .await;
    service.connect_url("abandoned", "pkce-app", None).await;
    // Not yet expired: a purge keeps it.
    assert_eq!(service.state.states.purge_expired().await.unwrap(), 0);
    clock.advance(chrono::Duration::seconds(61));
    assert_eq!(stored_states(&service).await, 1);
    assert_eq!(service.state.states.purge_expired().await.unwrap(), 1);
    assert_eq!(stored_states(&service).await, 0);
}

/// Rows in the OAuth state table (SQLite: the service's own file).
async fn stored_states(service: &Service) -> i64 {
    let pool = sqlx::SqlitePool::connect(&service.config.database_url())
        .await
        .unwrap();
    let count = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    count
}

/// Wix installs start from Wix: the app receives a `token` and must send the
/// user to Wix's installer with it. The connect session carries it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wix_installer_receives_the_token_the_app_passes_on() {
    let providers = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        providers.path(),
        "[providers.wix]\nauthorization_url = \"http://wix.test/installer/install\"\n",
    )
    .unwrap();
    let service = start_service(|config, base| {
        config.providers_file = Some(providers.path().to_path_buf());
        config.integrations.insert(
            IntegrationKey::parse("wix").unwrap(),
            IntegrationConfig {
                provider: "wix".into(),
                client_id: "wix-app-id".into(),
                client_secret: Some(SecretString::from("wix-secret")),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                ..Default::default()
            },
        );
    })
    .await;
    let body = json!({"user_id": "site-owner", "integration": "wix", "provider_params": {"token": "wix-install-token"}});
    let response = service.post_json("/v1/connect-sessions", body).await;
    assert_eq!(response.status(), 201);
    let connect = response.json::<Value>().await.unwrap()["connect_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let redirect = browser(Some("http://wix.test/".into()))
        .get(connect)
        .send()
        .await
        .unwrap();
    let installer = url::Url::parse(&location(&redirect)).unwrap();
    assert_eq!(
        installer.as_str().split('?').next().unwrap(),
        "http://wix.test/installer/install"
    );
    let params: std::collections::HashMap<_, _> = installer.query_pairs().into_owned().collect();
    assert_eq!(params["token"], "wix-install-token");
    assert_eq!(params["appId"], "wix-app-id");
    assert_eq!(params["redirectUrl"], service.url("/oauth/callback"));
    assert!(params["state"].len() >= 43);

    // Parameters a provider does not define are refused.
    let body = json!({"user_id": "u", "integration": "wix", "provider_params": {"prompt": "none"}});
    let refused = service.post_json("/v1/connect-sessions", body).await;
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "invalid_provider_params"
    );
}

/// A second browser with its own cookies, as a page load sends it
/// (`Accept: text/html`), following every redirect.
pub(crate) fn html_browser(stop_at: Option<String>) -> reqwest::Client {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if stop_at
            .as_deref()
            .is_some_and(|prefix| attempt.url().as_str().starts_with(prefix))
        {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::ACCEPT,
        "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
            .parse()
            .unwrap(),
    );
    reqwest::Client::builder()
        .cookie_store(true)
        .default_headers(headers)
        .redirect(policy)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_started_in_one_browser_cannot_be_finished_in_another() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;

    // The attacker opens her own connect link and stops at the provider's
    // consent screen; the binding cookie stays in her browser.
    let attacker = browser(Some(peer.issuer.clone()));
    let connect = service.connect_url("attacker", "basic-app", None).await;
    let at_provider = attacker.get(&connect).send().await.unwrap();
    assert_eq!(at_provider.status(), 302);
    let set_cookie = at_provider.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/oauth/callback",
        "Max-Age=",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let authorize = location(&at_provider);
    assert!(authorize.starts_with(&peer.issuer), "{authorize}");

    // The victim, logged in at the provider, opens that URL: the provider
    // sends her browser to our callback, which refuses it.
    let victim = html_browser(None);
    let page = victim.get(&authorize).send().await.unwrap();
    assert_eq!(page.status(), 400);
    assert!(
        page.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let text = page.text().await.unwrap();
    assert!(
        text.contains("finish the connection in the browser that started it")
            && text.contains("browser_mismatch"),
        "{text}"
    );
    assert!(!connection_exists(&service, "attacker", "basic-app").await);
    let stats = peer.stats().await;
    assert_eq!(
        stats["token_successes"].get("authorization_code"),
        None,
        "the victim's code was never exchanged: {stats}"
    );

    // The same refusal for a program (JSON), and with redirect_to the app
    // hears about it.
    let connect = service.connect_url("attacker", "basic-app", None).await;
    let authorize = location(&attacker.get(&connect).send().await.unwrap());
    let refused = browser(None).get(&authorize).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "browser_mismatch"
    );
    let connect = service
        .connect_url("attacker", "basic-app", Some("http://app.test/done"))
        .await;
    let authorize = location(&attacker.get(&connect).send().await.unwrap());
    let back_at_app = browser(Some(APP_ORIGIN.into()))
        .get(&authorize)
        .send()
        .await
        .unwrap();
    assert_eq!(
        location(&back_at_app),
        "http://app.test/done?connection=basic-app&status=error&error=browser_mismatch"
    );
    assert!(!connection_exists(&service, "attacker", "basic-app").await);

    // A forged cookie of the right name does not help either.
    let connect = service.connect_url("attacker", "basic-app", None).await;
    let at_provider = attacker.get(&connect).send().await.unwrap();
    let name = at_provider.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split('=')
        .next()
        .unwrap()
        .to_owned();
    let callback = browser(Some(service.url("/oauth/")))
        .get(location(&at_provider))
        .send()
        .await
        .unwrap();
    let forged = reqwest::Client::new()
        .get(location(&callback))
        .header(reqwest::header::COOKIE, format!("{name}=forged-nonce"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert!(!connection_exists(&service, "attacker", "basic-app").await);

    // The whole flow in one browser still connects, and the callback
    // clears the cookie.
    let user_browser = browser(Some(service.url("/oauth/")));
    let connect = service.connect_url("honest", "basic-app", None).await;
    let at_callback = user_browser.get(&connect).send().await.unwrap();
    let done = user_browser
        .get(location(&at_callback))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let cleared = done.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The page carries the code in its URL: nothing cached, no Referer.
    assert_eq!(done.headers()["cache-control"], "no-store");
    assert_eq!(done.headers()["referrer-policy"], "no-referrer");
    assert!(
        done.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    assert!(connection_exists(&service, "honest", "basic-app").await);
}

/// The app's side of confirm mode: the query of the redirect it received.
fn redirect_params(response: &reqwest::Response) -> std::collections::HashMap<String, String> {
    url::Url::parse(&location(response))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A confirm-mode flow for `user`, started in `desktop` and finished in
/// `phone`; returns the session id and the query the app's redirect got.
async fn confirm_flow(
    service: &Service,
    desktop: &reqwest::Client,
    phone: &reqwest::Client,
    user: &str,
) -> (String, std::collections::HashMap<String, String>) {
    let created = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": user, "integration": "basic-app", "confirm": true, "redirect_to": "http://app.test/done"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let at_provider = desktop
        .get(created["connect_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let at_app = phone.get(location(&at_provider)).send().await.unwrap();
    (
        created["id"].as_str().unwrap().to_owned(),
        redirect_params(&at_app),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_mode_stores_the_connection_only_when_the_app_confirms_it_for_its_user() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    // Confirm mode sends the code to the app: redirect_to is required.
    let refused = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "alice", "integration": "basic-app", "confirm": true}),
        )
        .await;
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "invalid_redirect_to"
    );

    // Started on one device, finished on another (no shared cookie): the
    // browser reaches the app with a confirmation code, nothing is stored.
    let desktop = browser(Some(peer.issuer.clone()));
    let phone = browser(Some(APP_ORIGIN.into()));
    let (session, params) = confirm_flow(&service, &desktop, &phone, "alice").await;
    assert_eq!(params["status"], "confirmation_required", "{params:?}");
    assert_eq!(params["connection"], "basic-app");
    assert_eq!(params["connect_session"], session);
    assert!(!connection_exists(&service, "alice", "basic-app").await);
    assert_eq!(
        peer.stats().await["token_successes"].get("authorization_code"),
        None,
        "the authorization code waits for the confirmation"
    );

    let confirm = |session: &str, body: Value| {
        let path = format!("/v1/connect-sessions/{session}/confirm");
        let service = &service;
        async move { service.post_json(&path, body).await }
    };
    // A code presented for another session is refused (and used up).
    let wrong_session = confirm(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        json!({"confirm_code": params["confirm_code"], "user_id": "alice"}),
    )
    .await;
    assert_eq!(wrong_session.status(), 404);

    // The app's backend confirms for its logged-in user: stored.
    let (session, params) = confirm_flow(&service, &desktop, &phone, "alice").await;
    let code = &params["confirm_code"];
    let confirmed = confirm(&session, json!({"confirm_code": code, "user_id": "alice"})).await;
    assert_eq!(confirmed.status(), 200);
    let confirmed: Value = confirmed.json().await.unwrap();
    assert_eq!(confirmed["status"], "connected");
    assert_eq!(confirmed["user_id"], "alice");
    assert!(connection_exists(&service, "alice", "basic-app").await);
    let token = service
        .get_json("/v1/users/alice/connections/basic-app/token")
        .await;
    assert_eq!(token.status(), 200);
    // One-time.
    let again = confirm(&session, json!({"confirm_code": code, "user_id": "alice"})).await;
    assert_eq!(again.status(), 404);
    assert_eq!(
        again.json::<Value>().await.unwrap()["error"],
        "confirmation_not_found"
    );

    // The account-linking attack in confirm mode: the victim's browser
    // brings the code to the app, whose logged-in user is the victim; the
    // app confirms for her, and the flow is discarded, never exchanged.
    let (session, params) = confirm_flow(&service, &desktop, &phone, "mallory").await;
    let code = &params["confirm_code"];
    let exchanged_before = peer.stats().await["token_successes"]["authorization_code"].clone();
    let mismatch = confirm(&session, json!({"confirm_code": code, "user_id": "victim"})).await;
    assert_eq!(mismatch.status(), 403);
    assert_eq!(
        mismatch.json::<Value>().await.unwrap()["error"],
        "user_mismatch"
    );
    let retried = confirm(
        &session,
        json!({"confirm_code": code, "user_id": "mallory"}),
    )
    .await;
    assert_eq!(retried.status(), 404, "a refused confirmation is used up");
    assert!(!connection_exists(&service, "mallory", "basic-app").await);
    assert!(!connection_exists(&service, "victim", "basic-app").await);
    assert_eq!(
        peer.stats().await["token_successes"]["authorization_code"],
        exchanged_before
    );

    // Bad input is a 4xx with its code.
    for (body, status, error) in [
        (
            json!({"confirm_code": "x", "user_id": "alice"}),
            404,
            "confirmation_not_found",
        ),
        (
            json!({"confirm_code": code, "user_id": "a b"}),
            400,
            "invalid_user_id",
        ),
        (json!({"user_id": "alice"}), 400, "invalid_json"),
    ] {
        let response = confirm(&session, body).await;
        assert_eq!(response.status(), status);
        assert_eq!(response.json::<Value>().await.unwrap()["error"], error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_save_fails_is_revoked_at_the_provider() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let user_browser = browser(Some(service.url("/oauth/")));
    let connect = service.connect_url("orphan", "basic-app", None).await;
    let at_callback = location(&user_browser.get(&connect).send().await.unwrap());
    // The connections table disappears between consent and callback.
    let database = sqlx::SqlitePool::connect(&service.config.database_url())
        .await
        .unwrap();
    sqlx::query("ALTER TABLE connections RENAME TO connections_elsewhere")
        .execute(&database)
        .await
        .unwrap();
    peer.hook("reset", json!({})).await;
    let failed = user_browser.get(&at_callback).send().await.unwrap();
    assert_eq!(failed.status(), 500);
    let stats = peer.stats().await;
    assert_eq!(stats["token_successes"]["authorization_code"], 1, "{stats}");
    // Its refresh token and its access token.
    assert_eq!(
        stats["revocations"], 2,
        "the orphaned grant is revoked: {stats}"
    );
    sqlx::query("ALTER TABLE connections_elsewhere RENAME TO connections")
        .execute(&database)
        .await
        .unwrap();
    service.stop().await;
}

/// One integration's issuer is down when the service starts: the others
/// serve, the dead one is reported (integrations, readiness, its connect
/// sessions answer 503), and it is picked up in the background once its
/// issuer answers, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_down_at_start_up_is_picked_up_when_it_comes_back() {
    let healthy = Peer::start();
    let late_port = free_port();
    let late_issuer = format!("http://127.0.0.1:{late_port}");
    let oidc = |client: &str, issuer: &str, base: &str| IntegrationConfig {
        provider: "oidc".into(),
        client_id: client.into(),
        client_secret: Some(SecretString::from(format!("{client}-secret"))),
        redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
        scopes: Some(vec!["openid".into(), "offline_access".into()]),
        issuer: Some(url::Url::parse(issuer).unwrap()),
        ..Default::default()
    };
    let healthy_issuer = healthy.issuer.clone();
    let service = start_service_with_workers(|config, base| {
        config.integrations.insert(
            IntegrationKey::parse("healthy").unwrap(),
            oidc("healthy", &healthy_issuer, base),
        );
        config.integrations.insert(
            IntegrationKey::parse("late").unwrap(),
            oidc("late", &late_issuer, base),
        );
        config.scheduler_enabled = false;
    })
    .await;
    let callback = service.url("/oauth/callback");
    for (peer, client) in [(&healthy, "healthy")] {
        peer.register(
            client,
            "client_secret_basic",
            Some(&format!("{client}-secret")),
            &callback,
            &["authorization_code", "refresh_token"],
        )
        .await;
    }
    connect_with_ttl(&healthy, &service, "ann", "healthy", 3600).await;
    assert!(connection_exists(&service, "ann", "healthy").await);

    let status = |body: &Value, key: &str| {
        body["integrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} not listed: {body}"))
    };
    let listed: Value = service
        .get_json("/v1/integrations")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status(&listed, "healthy")["status"], "available");
    let late = status(&listed, "late");
    assert_eq!(late["status"], "unavailable", "{late}");
    assert!(late["unavailable"]["error"].is_string(), "{late}");
    let ready = reqwest::get(service.url("/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "one dead integration is not unreadiness"
    );
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready["checks"]["integrations"]["late"]["status"],
        "unavailable"
    );
    let refused = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "bob", "integration": "late"}),
        )
        .await;
    assert_eq!(refused.status(), 503);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"], "integration_unavailable");

    // The issuer comes back; the service notices within 30 s.
    let late_peer = Peer::start_on(late_port);
    late_peer
        .register(
            "late",
            "client_secret_basic",
            Some("late-secret"),
            &callback,
            &["authorization_code", "refresh_token"],
        )
        .await;
    let back = std::time::Instant::now();
    loop {
        let listed: Value = service
            .get_json("/v1/integrations")
            .await
            .json()
            .await
            .unwrap();
        if status(&listed, "late")["status"] == "available" {
            break;
        }
        assert!(
            back.elapsed() < std::time::Duration::from_secs(30),
            "not picked up within 30 s: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    connect_with_ttl(&late_peer, &service, "bob", "late", 3600).await;
    assert!(connection_exists(&service, "bob", "late").await);
    let token = service
        .get_json("/v1/users/bob/connections/late/token")
        .await;
    assert_eq!(token.status(), 200);
    let ready: Value = reqwest::get(service.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["integrations"]["late"]["status"], "ok");
    service.stop().await;
}

/// An issuer whose discovery document offers only public clients
/// (`token_endpoint_auth_methods_supported: ["none"]`), and an `oidc`
/// integration without a client secret: a PKCE public client that
/// connects, refreshes and revokes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_connects_refreshes_and_revokes_through_discovery() {
    let peer = Peer::start_with(0, &[("PEER_CLIENT_AUTH_METHODS", "none")]);
    let discovery: Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", peer.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        discovery["token_endpoint_auth_methods_supported"],
        json!(["none"]),
        "the peer offers only public clients"
    );
    let issuer = peer.issuer.clone();
    let service = start_service(|config, base| {
        config.integrations.insert(
            IntegrationKey::parse("public-app").unwrap(),
            IntegrationConfig {
                provider: "oidc".into(),
                client_id: "public-app".into(),
                client_secret: None,
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                scopes: Some(vec!["openid".into(), "offline_access".into()]),
                issuer: Some(url::Url::parse(&issuer).unwrap()),
                ..Default::default()
            },
        );
    })
    .await;
    peer.register(
        "public-app",
        "none",
        None,
        &service.url("/oauth/callback"),
        &["authorization_code", "refresh_token"],
    )
    .await;
    // The peer refuses a public client's authorization request without
    // PKCE, so connecting proves it was sent.
    connect_with_ttl(&peer, &service, "pat", "public-app", 3600).await;
    assert!(connection_exists(&service, "pat", "public-app").await);
    let forced = service
        .post_json("/v1/users/pat/connections/public-app/refresh", json!({}))
        .await;
    assert_eq!(forced.status(), 200);
    let forced: Value = forced.json().await.unwrap();
    assert_eq!(forced["refreshed"], true);
    let stats = peer.stats().await;
    assert_eq!(stats["refresh_by_client"]["public-app"], 1, "{stats}");
    let revoked = service.delete("/v1/users/pat/connections/public-app").await;
    assert_eq!(revoked.status(), 200);
    let revoked: Value = revoked.json().await.unwrap();
    assert_eq!(revoked["revoked_at_provider"], true, "{revoked}");
}
