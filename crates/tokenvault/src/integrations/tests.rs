//! Unit tests of configuration, resolution and token conversion. The
//! per-provider wire format is covered by `tests/provider_fixtures.rs`.

use std::collections::HashMap;

use chrono::TimeZone as _;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::domain::{AccessToken, RefreshToken, TokenType};
use crate::oauth::{OAuthClientConfig, OAuthError, Pkce};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret as _;

fn key(k: &str) -> IntegrationKey {
    IntegrationKey::parse(k).unwrap()
}

fn oauth() -> OAuthClient {
    OAuthClient::new(OAuthClientConfig::default()).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
}

fn config(provider: &str, redirect: &str) -> IntegrationConfig {
    IntegrationConfig {
        provider: provider.into(),
        client_id: "cid".into(),
        client_secret: Some("csecret".into()),
        redirect_uri: Some(Url::parse(redirect).unwrap()),
        ..IntegrationConfig::default()
    }
}

fn err_text<T: std::fmt::Debug>(r: Result<T, IntegrationConfigError>) -> String {
    r.expect_err("expected an error").to_string()
}

/// A catalog whose `key` entry points at `server` (token, revocation,
/// userinfo).
fn mocked_catalog(server: &MockServer, key: &str, extra: &str) -> Catalog {
    Catalog::builtin()
        .merge_toml_str(&format!(
            r#"
            [providers.{key}]
            authorization_url = "{uri}/authorize"
            token_url = "{uri}/token"
            userinfo_url = "{uri}/userinfo"
            {extra}
            "#,
            uri = server.uri()
        ))
        .unwrap()
}

fn integration(catalog: &Catalog, provider: &str) -> Integration {
    Integration::new(
        key(provider),
        &config(provider, "https://app.example.com/cb"),
        catalog.get(provider).unwrap().clone(),
        oauth(),
    )
    .unwrap()
}

fn form_of(req: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(&req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---------------------------------------------------------------- config

#[test]
fn parses_toml_and_never_prints_the_secret() {
    let cfg = IntegrationsConfig::from_toml_str(
        r#"
        [server]
        ignored = true

        [integrations.spotify]
        provider = "spotify"
        client_id = "abc"
        client_secret = "super-secret-value"
        redirect_uri = "https://app.example.com/oauth/callback"

        [integrations.acme]
        provider = "oidc"
        issuer = "https://login.acme.example"
        client_id = "acme-client"
        scopes = ["openid", "offline_access"]
        authorize_params = { login_hint = "someone" }
        "#,
    )
    .unwrap();
    let spotify = &cfg.integrations[&key("spotify")];
    assert_eq!(spotify.client_id, "abc");
    assert_eq!(
        spotify.client_secret.as_ref().unwrap().expose_secret(),
        "super-secret-value"
    );
    assert!(!format!("{cfg:?}").contains("super-secret-value"));
    let acme = &cfg.integrations[&key("acme")];
    assert_eq!(
        acme.issuer.as_ref().unwrap().host_str(),
        Some("login.acme.example")
    );
    assert_eq!(
        acme.scopes.as_deref().unwrap(),
        ["openid", "offline_access"]
    );
    assert_eq!(acme.authorize_params["login_hint"], "someone");

    // Typos inside an integration are errors; bad keys too.
    let err = IntegrationsConfig::from_toml_str(
        "[integrations.spotify]\nprovider = \"spotify\"\nclient_secert = \"x\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("client_secert"), "{err}");
    assert!(IntegrationsConfig::from_toml_str("[integrations.Bad]\nprovider = \"x\"\n").is_err());
}

#[test]
fn redirect_uri_validation() {
    let public = Url::parse("https://app.example.com").unwrap();
    // (redirect, public_url, production, expected error fragment or None)
    let cases: &[(&str, Option<&Url>, bool, Option<&str>)] = &[
        ("https://app.example.com/cb", Some(&public), true, None),
        ("https://app.example.com:443/cb", Some(&public), true, None),
        ("https://other.example.com/cb", None, true, None),
        (
            "http://app.example.com/cb",
            None,
            true,
            Some("SPOTIFY_REDIRECT_URI: must use https in production"),
        ),
        (
            "http://localhost:8080/cb",
            None,
            true,
            Some("SPOTIFY_REDIRECT_URI: must use https in production"),
        ),
        ("http://localhost:8080/cb", None, false, None),
        ("http://127.0.0.1:8080/cb", None, false, None),
        ("http://[::1]:8080/cb", None, false, None),
        (
            "http://192.168.1.10/cb",
            None,
            false,
            Some("SPOTIFY_REDIRECT_URI: must use https (http is only allowed on localhost"),
        ),
        ("https://dev.example/cb", None, false, None),
        (
            "https://evil.example/cb",
            Some(&public),
            true,
            Some(
                "SPOTIFY_REDIRECT_URI: must be on the public URL's origin https://app.example.com",
            ),
        ),
        (
            "https://app.example.com:8443/cb",
            Some(&public),
            true,
            Some("must be on the public URL's origin"),
        ),
        (
            "https://app.example.com/cb#frag",
            None,
            true,
            Some("SPOTIFY_REDIRECT_URI: must not contain a fragment"),
        ),
        (
            "ftp://app.example.com/cb",
            None,
            false,
            Some("SPOTIFY_REDIRECT_URI: must be an absolute http(s) URL"),
        ),
        (
            "mailto:me@example.com",
            None,
            false,
            Some("SPOTIFY_REDIRECT_URI: must be an absolute http(s) URL"),
        ),
    ];
    for (redirect, public_url, production, expected) in cases {
        let result =
            config("spotify", redirect).validate(&key("spotify"), *public_url, *production);
        match expected {
            None => assert!(result.is_ok(), "{redirect}: {result:?}"),
            Some(fragment) => {
                let err = err_text(result);
                assert!(err.contains(fragment), "{redirect}: got `{err}`");
            }
        }
    }
}

#[test]
fn other_validation_errors_name_what_to_fix() {
    let k = key("google-mail");
    let mut cfg = config("google-mail", "https://app.example.com/cb");
    cfg.client_id = String::new();
    assert!(err_text(cfg.validate(&k, None, true)).starts_with("GOOGLE_MAIL_CLIENT_ID: missing"));

    let mut cfg = config("google-mail", "https://app.example.com/cb");
    cfg.redirect_uri = None;
    assert!(
        err_text(cfg.validate(&k, None, true)).starts_with("GOOGLE_MAIL_REDIRECT_URI: missing")
    );

    let mut cfg = config("google-mail", "https://app.example.com/cb");
    cfg.scopes = Some(vec!["a b".into()]);
    assert!(err_text(cfg.validate(&k, None, true)).starts_with("integrations.google-mail.scopes"));

    let mut cfg = config("google-mail", "https://app.example.com/cb");
    cfg.authorize_params
        .insert("redirect_uri".into(), "x".into());
    assert!(
        err_text(cfg.validate(&k, None, true))
            .starts_with("integrations.google-mail.authorize_params")
    );

    let mut cfg = config("oidc", "https://app.example.com/cb");
    cfg.issuer = Some(Url::parse("http://login.example").unwrap());
    assert!(err_text(cfg.validate(&k, None, false)).starts_with("integrations.google-mail.issuer"));
    cfg.issuer = Some(Url::parse("http://localhost:9000").unwrap());
    assert!(cfg.validate(&k, None, false).is_ok());
    assert!(cfg.validate(&k, None, true).is_err());
}

#[test]
fn confidential_provider_without_secret_names_the_variable() {
    let catalog = Catalog::builtin();
    let mut cfg = config("google", "https://app.example.com/cb");
    cfg.client_secret = None;
    let err = err_text(Integration::new(
        key("google-calendar"),
        &cfg,
        catalog.get("google").unwrap().clone(),
        oauth(),
    ));
    assert!(
        err.starts_with("GOOGLE_CALENDAR_CLIENT_SECRET: missing"),
        "{err}"
    );
    assert!(err.contains("client_secret_post"), "{err}");

    // A public client (user catalog override) needs none.
    let catalog = Catalog::builtin()
        .merge_toml_str("[providers.spotify]\ntoken_auth_method = \"none\"\n")
        .unwrap();
    let mut cfg = config("spotify", "https://app.example.com/cb");
    cfg.client_secret = None;
    Integration::new(
        key("spotify"),
        &cfg,
        catalog.get("spotify").unwrap().clone(),
        oauth(),
    )
    .unwrap();
}

// ---------------------------------------------------------------- resolution

fn oidc_metadata(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile", "offline_access"],
    })
}

#[tokio::test]
async fn resolves_catalog_entries_and_oidc_discovery() {
    let catalog = Catalog::builtin();

    let err = err_text(
        Integration::resolve(
            key("x"),
            &config("nope", "https://a.example/cb"),
            &catalog,
            oauth(),
        )
        .await,
    );
    assert_eq!(
        err,
        "integrations.x.provider: unknown provider `nope` (not in the provider catalog)"
    );

    let mut cfg = config("spotify", "https://a.example/cb");
    cfg.issuer = Some(Url::parse("https://login.example").unwrap());
    let err = err_text(Integration::resolve(key("spotify"), &cfg, &catalog, oauth()).await);
    assert!(err.starts_with("integrations.spotify.issuer:"), "{err}");

    let err = err_text(
        Integration::resolve(
            key("acme"),
            &config("oidc", "https://a.example/cb"),
            &catalog,
            oauth(),
        )
        .await,
    );
    assert!(
        err.starts_with("integrations.acme.issuer: required"),
        "{err}"
    );

    // Discovery at the configured issuer.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(oidc_metadata(&server.uri())))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config("oidc", "https://a.example/cb");
    cfg.issuer = Some(Url::parse(&server.uri()).unwrap());
    let mut all = IntegrationsConfig::default();
    all.integrations.insert(key("acme"), cfg);
    all.integrations
        .insert(key("spotify"), config("spotify", "https://a.example/cb"));
    let integrations = Integrations::resolve(&all, &catalog, &oauth())
        .await
        .unwrap();
    assert_eq!(integrations.len(), 2);
    let acme = integrations.get(&key("acme")).unwrap();
    assert_eq!(
        acme.spec().token_url.as_str(),
        format!("{}/token", server.uri())
    );
    assert_eq!(acme.spec().token_auth_method.as_str(), "client_secret_post");
    assert!(acme.wants_pkce());
    assert!(acme.default_scopes().contains(&"offline_access".to_owned()));

    let pkce = Pkce::generate();
    let url = acme.authorize_url("st", Some(&pkce), None);
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["scope"], "openid email profile offline_access");
    assert_eq!(q["code_challenge"], pkce.challenge());
    // Without offline_access there is no forced consent.
    let url = acme.authorize_url("st", None, Some(&Scopes::parse("openid email", " ")));
    assert!(!url.query_pairs().any(|(k, _)| k == "prompt"));
}

// ---------------------------------------------------------------- authorize URL

#[test]
fn authorize_params_merge_config_catalog_and_request() {
    let catalog = Catalog::builtin();
    let mut cfg = config("google", "https://app.example.com/cb");
    cfg.authorize_params
        .insert("prompt".into(), "select_account consent".into());
    cfg.authorize_params
        .insert("hd".into(), "example.com".into());
    let google = Integration::new(
        key("google"),
        &cfg,
        catalog.get("google").unwrap().clone(),
        oauth(),
    )
    .unwrap();
    let url = google.authorize_url_with(
        "st",
        None,
        None,
        &[
            ("login_hint".into(), "me@example.com".into()),
            ("state".into(), "hijack".into()),
        ],
    );
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let get = |k: &str| {
        let v: Vec<&str> = pairs
            .iter()
            .filter(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(v.len() <= 1, "`{k}` repeated: {v:?}");
        v.first().map(|s| (*s).to_owned())
    };
    assert_eq!(get("prompt").as_deref(), Some("select_account consent"));
    assert_eq!(get("access_type").as_deref(), Some("offline"));
    assert_eq!(get("hd").as_deref(), Some("example.com"));
    assert_eq!(get("login_hint").as_deref(), Some("me@example.com"));
    assert_eq!(get("state").as_deref(), Some("st"));
}

#[test]
fn pkce_follows_provider_support() {
    let catalog = Catalog::builtin();
    let pkce = Pkce::generate();
    for (provider, expected) in [("spotify", true), ("tidal", true), ("discord", false)] {
        let i = integration(&catalog, provider);
        assert_eq!(i.wants_pkce(), expected, "{provider}");
        let url = i.authorize_url("s", Some(&pkce), None);
        assert_eq!(
            url.query_pairs().any(|(k, _)| k == "code_challenge"),
            expected,
            "{provider}"
        );
    }
}

#[tokio::test]
async fn required_pkce_without_verifier_is_a_config_error() {
    let server = MockServer::start().await;
    let catalog = mocked_catalog(&server, "tidal", "");
    let err = integration(&catalog, "tidal")
        .exchange_code("code", None, None, now())
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Config(_)), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

// ---------------------------------------------------------------- token conversion

#[tokio::test]
async fn token_response_conversion() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "AT-1234567890abcdef",
            "token_type": "BEARER",
            "expires_in": "3600",
            "scope": "",
            "id_token": "header.payload.sig",
            "blog_id": 42,
            "bot": {"bot_access_token": "xoxb", "bot_user_id": "U1"},
            "client_secret_expires_at": 0,
        })))
        .mount(&server)
        .await;
    let catalog = mocked_catalog(&server, "spotify", "");
    let spotify = integration(&catalog, "spotify");
    let grant = spotify
        .exchange_code("c", None, Some(&Scopes::parse("a b", " ")), now())
        .await
        .unwrap();
    assert_eq!(grant.tokens.token_type, TokenType::Bearer);
    assert_eq!(grant.tokens.access_token.expose(), "AT-1234567890abcdef");
    // Empty granted scope string → the requested ones.
    assert_eq!(grant.tokens.scopes, Scopes::parse("a b", " "));
    assert_eq!(
        grant.tokens.expires_at,
        Some(now() + chrono::TimeDelta::seconds(3600))
    );
    assert!(grant.tokens.refresh_token.is_none());
    assert!(!grant.refresh_token_issued);
    assert_eq!(
        grant.id_token.unwrap().expose_secret(),
        "header.payload.sig"
    );
    assert_eq!(
        grant.metadata,
        json!({"blog_id": 42, "bot": {"bot_user_id": "U1"}})
    );
}

#[tokio::test]
async fn default_expires_in_and_unknown_token_type() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "AT", "token_type": "weird", "expires_in": 0
        })))
        .mount(&server)
        .await;
    // No expires_in (0 counts as none) and no default → never expires.
    let catalog = mocked_catalog(&server, "discord", "");
    let grant = integration(&catalog, "discord")
        .client_credentials(None, now())
        .await
        .unwrap();
    assert_eq!(grant.tokens.expires_at, None);
    assert_eq!(grant.tokens.token_type, TokenType::Bearer);
    assert_eq!(grant.tokens.scopes, Scopes::parse("identify email", " "));
    // With a catalog default it applies.
    let catalog = mocked_catalog(&server, "discord", "default_expires_in_secs = 900");
    let grant = integration(&catalog, "discord")
        .client_credentials(None, now())
        .await
        .unwrap();
    assert_eq!(
        grant.tokens.expires_at,
        Some(now() + chrono::TimeDelta::seconds(900))
    );
}

#[tokio::test]
async fn refresh_keeps_or_replaces_the_refresh_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "AT-new", "expires_in": 60, "refresh_token": "RT-new", "scope": "x y"
        })))
        .mount(&server)
        .await;
    let catalog = mocked_catalog(&server, "discord", "");
    let old = RefreshToken::new("RT-old");
    let grant = integration(&catalog, "discord")
        .refresh(&old, &Scopes::parse("identify", " "), now())
        .await
        .unwrap();
    assert!(grant.refresh_token_issued);
    assert_eq!(grant.tokens.refresh_token.unwrap().expose(), "RT-new");
    assert_eq!(grant.tokens.scopes, Scopes::parse("x y", " "));
    // Discord does not get `scope` on refresh.
    let req = &server.received_requests().await.unwrap()[0];
    assert!(!form_of(req).contains_key("scope"));
}

/// Client-secret rotation: only `invalid_client` moves to the next secret
/// (once), a working one stays in use, and any other refusal is never
/// retried (a second refresh with the same token could hit a rotating
/// provider's reuse detection).
#[tokio::test]
async fn only_invalid_client_tries_the_next_secret() {
    use base64::Engine as _;
    let server = MockServer::start().await;
    let basic = |secret: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("cid:{secret}"))
        )
    };
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(wiremock::matchers::header(
            "authorization",
            basic("new").as_str(),
        ))
        .and(wiremock::matchers::body_string_contains(
            "refresh_token=RT-good",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "AT-new", "expires_in": 60
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(wiremock::matchers::body_string_contains(
            "refresh_token=RT-dead",
        ))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    let catalog = mocked_catalog(&server, "spotify", "");
    let mut settings = config("spotify", "https://app.example.com/cb");
    settings.client_secret = None;
    settings.client_secrets = Some(vec!["old".into(), "new".into()]);
    let integration = Integration::new(
        key("spotify"),
        &settings,
        catalog.get("spotify").unwrap().clone(),
        oauth(),
    )
    .unwrap();
    assert_eq!(integration.client_secret_in_use(), Some((1, 2)));
    let scopes = Scopes::parse("x", " ");
    let requests = async || server.received_requests().await.unwrap();

    integration
        .refresh(&RefreshToken::new("RT-good"), &scopes, now())
        .await
        .unwrap();
    let sent = requests().await;
    assert_eq!(sent.len(), 2, "old refused, new accepted");
    assert_eq!(sent[0].headers["authorization"], basic("old").as_str());
    assert_eq!(sent[1].headers["authorization"], basic("new").as_str());
    assert_eq!(integration.client_secret_in_use(), Some((2, 2)));
    // Clones share it; the next call starts with the secret that works.
    integration
        .clone()
        .refresh(&RefreshToken::new("RT-good"), &scopes, now())
        .await
        .unwrap();
    assert_eq!(requests().await.len(), 3);

    // A refused grant is not retried with the other secret.
    let err = integration
        .refresh(&RefreshToken::new("RT-dead"), &scopes, now())
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("invalid_grant"));
    assert_eq!(requests().await.len(), 4);
    assert_eq!(integration.client_secret_in_use(), Some((2, 2)));

    // Both refused: the error is the provider's, after one retry only.
    server.reset().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    let err = integration
        .refresh(&RefreshToken::new("RT-good"), &scopes, now())
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("invalid_client"));
    assert_eq!(requests().await.len(), 2);
    assert_eq!(
        integration.client_secret_in_use(),
        Some((2, 2)),
        "unchanged"
    );
    // Debug never shows a secret.
    let shown = format!("{integration:?}");
    assert!(
        !shown.contains("\"old\"") && !shown.contains("\"new\""),
        "{shown}"
    );
}

// ---------------------------------------------------------------- revocation

#[tokio::test]
async fn rfc7009_revokes_refresh_then_access_and_tolerates_invalid_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .and(wiremock::matchers::body_string_contains(
            "token_type_hint=access_token",
        ))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error": "invalid_token", "error_description": "Token expired or revoked"}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let catalog = mocked_catalog(
        &server,
        "google",
        &format!("revocation_url = \"{}/revoke\"", server.uri()),
    );
    let google = integration(&catalog, "google");
    let tokens = TokenSet {
        access_token: AccessToken::new("AT-x"),
        refresh_token: Some(RefreshToken::new("RT-x")),
        token_type: TokenType::Bearer,
        scopes: Scopes::new(),
        expires_at: None,
    };
    assert!(google.revoke(&tokens).await.unwrap());
    let reqs = server.received_requests().await.unwrap();
    let forms: Vec<_> = reqs.iter().map(form_of).collect();
    assert_eq!(forms.len(), 2);
    assert_eq!(forms[0]["token"], "RT-x");
    assert_eq!(forms[0]["token_type_hint"], "refresh_token");
    assert_eq!(forms[1]["token"], "AT-x");
    assert_eq!(forms[1]["token_type_hint"], "access_token");
    // Google authenticates with client_secret_post there too.
    assert_eq!(forms[0]["client_secret"], "csecret");

    // Other errors propagate.
    let failing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&failing)
        .await;
    let catalog = mocked_catalog(
        &failing,
        "google",
        &format!("revocation_url = \"{}/revoke\"", failing.uri()),
    );
    let err = integration(&catalog, "google")
        .revoke(&tokens)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));

    // No revocation endpoint: nothing is sent, Ok(false).
    let spotify = integration(&Catalog::builtin(), "spotify");
    assert!(!spotify.revoke(&tokens).await.unwrap());
}

// ---------------------------------------------------------------- profile

#[tokio::test]
async fn userinfo_maps_the_profile() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/userinfo"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 583231, "login": "octocat", "name": null, "email": null
        })))
        .mount(&server)
        .await;
    let catalog = mocked_catalog(&server, "github", "");
    let profile = integration(&catalog, "github")
        .userinfo(&AccessToken::new("gho_x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(profile.id, "583231");
    assert_eq!(profile.display_name.as_deref(), Some("octocat"));
    assert_eq!(profile.email, None);
    assert_eq!(profile.raw["login"], "octocat");

    // No profile endpoint → None, without a request.
    let bing = integration(&Catalog::builtin(), "bing-webmaster");
    assert!(
        bing.userinfo(&AccessToken::new("t"))
            .await
            .unwrap()
            .is_none()
    );

    // A document without the id is an invalid response.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"login": "x"})))
        .mount(&server)
        .await;
    let catalog = mocked_catalog(&server, "github", "");
    let err = integration(&catalog, "github")
        .userinfo(&AccessToken::new("gho_x"))
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidResponse(_)), "{err:?}");
}

#[test]
fn api_authorization_header_follows_the_scheme() {
    let tokens = TokenSet {
        access_token: AccessToken::new("tok"),
        refresh_token: None,
        token_type: TokenType::Bearer,
        scopes: Scopes::new(),
        expires_at: None,
    };
    let catalog = Catalog::builtin();
    assert_eq!(
        integration(&catalog, "spotify")
            .api_authorization(&tokens)
            .expose_secret(),
        "Bearer tok"
    );
    assert_eq!(
        integration(&catalog, "wix")
            .api_authorization(&tokens)
            .expose_secret(),
        "tok"
    );
}

// ---------------------------------------------------------------- public clients

/// A discovery document offering `none` beside a confidential method.
async fn public_capable_issuer() -> MockServer {
    let server = MockServer::start().await;
    let mut meta = oidc_metadata(&server.uri());
    meta["token_endpoint_auth_methods_supported"] = json!(["client_secret_basic", "none"]);
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(meta))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn without_a_secret_an_integration_is_a_public_client_where_the_issuer_allows() {
    let server = public_capable_issuer().await;
    let catalog = Catalog::builtin();
    let mut cfg = config("oidc", "https://a.example/cb");
    cfg.issuer = Some(Url::parse(&server.uri()).unwrap());
    let confidential = Integration::resolve(key("acme"), &cfg, &catalog, oauth())
        .await
        .unwrap();
    assert_eq!(confidential.auth.method.as_str(), "client_secret_basic");
    cfg.client_secret = None;
    let public = Integration::resolve(key("acme"), &cfg, &catalog, oauth())
        .await
        .unwrap();
    assert_eq!(public.auth.method.as_str(), "none");
    assert!(public.wants_pkce());

    // An explicit method in the provider entry wins over discovery: a
    // confidential one then needs the secret.
    let explicit = catalog
        .merge_toml_str(&format!(
            "[providers.strict]\ndiscovery = true\nissuer = \"{}\"\ntoken_auth_method = \"client_secret_post\"\n",
            server.uri()
        ))
        .unwrap();
    let mut strict = config("strict", "https://a.example/cb");
    strict.client_secret = None;
    let err = err_text(Integration::resolve(key("strict"), &strict, &explicit, oauth()).await);
    assert!(err.starts_with("STRICT_CLIENT_SECRET: missing"), "{err}");
}

#[tokio::test]
async fn an_unreachable_issuer_leaves_only_its_integration_unavailable_until_it_answers() {
    let catalog = Catalog::builtin();
    // A port nothing listens on yet.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let issuer = format!("http://127.0.0.1:{port}");
    let mut down = config("oidc", "https://a.example/cb");
    down.issuer = Some(Url::parse(&issuer).unwrap());
    let mut all = IntegrationsConfig::default();
    all.integrations.insert(key("down"), down);
    all.integrations
        .insert(key("spotify"), config("spotify", "https://a.example/cb"));
    let integrations = Integrations::resolve(&all, &catalog, &oauth())
        .await
        .expect("one unreachable issuer does not stop the others");
    assert!(integrations.get(&key("spotify")).is_some());
    assert!(integrations.get(&key("down")).is_none());
    let unavailable = integrations.unavailable();
    assert_eq!(unavailable.len(), 1);
    assert_eq!(unavailable[0].key, key("down"));
    assert_eq!(unavailable[0].attempts, 1);
    assert!(!unavailable[0].error.is_empty());

    // Still down: the retry counts and backs off.
    tokio::time::sleep_until(integrations.next_retry().unwrap().into()).await;
    assert!(
        integrations
            .retry_unavailable(&catalog, &oauth())
            .await
            .is_empty()
    );
    assert_eq!(integrations.unavailable()[0].attempts, 2);

    // The issuer comes up on that port: the next due retry resolves it.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = MockServer::builder().listener(listener).start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(oidc_metadata(&server.uri())))
        .mount(&server)
        .await;
    tokio::time::sleep_until(integrations.next_retry().unwrap().into()).await;
    assert_eq!(
        integrations.retry_unavailable(&catalog, &oauth()).await,
        [key("down")]
    );
    assert!(integrations.get(&key("down")).is_some());
    assert!(integrations.unavailable().is_empty());
    assert!(integrations.next_retry().is_none());
}
