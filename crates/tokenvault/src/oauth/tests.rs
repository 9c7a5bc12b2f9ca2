//! End-to-end protocol tests against a wiremock provider.

use std::time::Duration;

use proptest::prelude::*;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use url::Url;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;

const ID: &str = "client:id@x";
const SECRET: &str = "p@ss w/rd+&=é";

fn client() -> OAuthClient {
    OAuthClient::new(OAuthClientConfig::default()).unwrap()
}

fn url(server: &MockServer, p: &str) -> Url {
    Url::parse(&format!("{}{p}", server.uri())).unwrap()
}

fn form_of(req: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&req.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn form_get<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn only_request(server: &MockServer) -> Request {
    let mut reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 1, "expected exactly one request");
    reqs.remove(0)
}

async fn token_server(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

fn ok_token() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": "AT-123",
        "refresh_token": "RT-456",
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "a b"
    }))
}

async fn exchange(
    server: &MockServer,
    auth: &ClientAuth,
    opts: &TokenRequestOptions,
) -> Result<TokenResponse, OAuthError> {
    client()
        .exchange_code(
            &url(server, "/token"),
            auth,
            "the-code",
            Some("https://app.example/cb"),
            None,
            opts,
        )
        .await
}

// ---------------------------------------------------------------- client auth

#[tokio::test]
async fn basic_auth_form_urlencodes_before_base64() {
    let server = token_server(ok_token()).await;
    let auth = ClientAuth::basic(ID, SecretString::from(SECRET));
    let token = exchange(&server, &auth, &TokenRequestOptions::default())
        .await
        .unwrap();
    assert_eq!(token.access_token.expose_secret(), "AT-123");
    assert_eq!(token.refresh_token.unwrap().expose_secret(), "RT-456");
    assert_eq!(token.expires_in, Some(3600));

    let req = only_request(&server).await;
    // base64("client%3Aid%40x:p%40ss+w%2Frd%2B%26%3D%C3%A9")
    assert_eq!(
        req.headers.get("authorization").unwrap(),
        "Basic Y2xpZW50JTNBaWQlNDB4OnAlNDBzcyt3JTJGcmQlMkIlMjYlM0QlQzMlQTk="
    );
    assert_eq!(req.headers.get("accept").unwrap(), "application/json");
    assert!(
        req.headers
            .get("user-agent")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("tokenvault/")
    );
    let form = form_of(&req);
    assert_eq!(form_get(&form, "grant_type"), Some("authorization_code"));
    assert_eq!(form_get(&form, "code"), Some("the-code"));
    assert_eq!(
        form_get(&form, "redirect_uri"),
        Some("https://app.example/cb")
    );
    assert_eq!(form_get(&form, "client_id"), None);
    assert_eq!(form_get(&form, "client_secret"), None);
}

#[tokio::test]
async fn post_auth_puts_credentials_in_body_only() {
    let server = token_server(ok_token()).await;
    let auth = ClientAuth::post(ID, SecretString::from(SECRET));
    exchange(&server, &auth, &TokenRequestOptions::default())
        .await
        .unwrap();
    let req = only_request(&server).await;
    assert!(req.headers.get("authorization").is_none());
    let form = form_of(&req);
    assert_eq!(form_get(&form, "client_id"), Some(ID));
    assert_eq!(form_get(&form, "client_secret"), Some(SECRET));
}

#[tokio::test]
async fn none_auth_sends_client_id_and_verifier_but_no_secret() {
    let server = token_server(ok_token()).await;
    // Even if a secret is configured, method `none` must never send it.
    let auth = ClientAuth {
        client_id: "public-app".into(),
        client_secret: Some(SecretString::from(SECRET)),
        method: ClientAuthMethod::None,
    };
    let pkce = Pkce::generate();
    client()
        .exchange_code(
            &url(&server, "/token"),
            &auth,
            "c",
            Some("https://app.example/cb"),
            Some(pkce.verifier()),
            &TokenRequestOptions::default(),
        )
        .await
        .unwrap();
    let req = only_request(&server).await;
    assert!(req.headers.get("authorization").is_none());
    let form = form_of(&req);
    assert_eq!(form_get(&form, "client_id"), Some("public-app"));
    assert_eq!(
        form_get(&form, "code_verifier"),
        Some(pkce.verifier().expose_secret())
    );
    assert_eq!(form_get(&form, "client_secret"), None);
    assert!(!String::from_utf8_lossy(&req.body).contains("p%40ss"));
}

#[tokio::test]
async fn basic_without_secret_is_config_error_and_sends_nothing() {
    let server = token_server(ok_token()).await;
    let auth = ClientAuth {
        client_id: "x".into(),
        client_secret: None,
        method: ClientAuthMethod::ClientSecretBasic,
    };
    let err = exchange(&server, &auth, &TokenRequestOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Config(_)), "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[test]
fn client_auth_method_serde_names() {
    for (m, s) in [
        (
            ClientAuthMethod::ClientSecretBasic,
            "\"client_secret_basic\"",
        ),
        (ClientAuthMethod::ClientSecretPost, "\"client_secret_post\""),
        (ClientAuthMethod::None, "\"none\""),
    ] {
        assert_eq!(serde_json::to_string(&m).unwrap(), s);
        assert_eq!(serde_json::from_str::<ClientAuthMethod>(s).unwrap(), m);
    }
}

// ---------------------------------------------------------------- PKCE / authorize URL

#[test]
fn pkce_rfc7636_appendix_b() {
    let verifier = SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    assert_eq!(
        Pkce::from_verifier(verifier).challenge(),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[test]
fn authorize_url_has_all_params_and_keeps_existing_query() {
    let base = Url::parse("https://accounts.example/o/oauth2/auth?tenant=t1&state=stale").unwrap();
    let scopes = vec!["openid".to_string(), "email profile.read".to_string()];
    let extra = vec![
        ("access_type".to_string(), "offline".to_string()),
        ("prompt".to_string(), "consent".to_string()),
        ("state".to_string(), "ignored".to_string()),
    ];
    let url = build_authorize_url(&AuthorizeRequest {
        authorization_url: &base,
        client_id: "cid",
        redirect_uri: "https://app.example/cb?x=1",
        scopes: &scopes,
        scope_separator: " ",
        state: "st&ate",
        code_challenge: Some("chal"),
        extra_params: &extra,
    });
    assert_eq!(url.path(), "/o/oauth2/auth");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let expected = [
        ("tenant", "t1"),
        ("response_type", "code"),
        ("client_id", "cid"),
        ("redirect_uri", "https://app.example/cb?x=1"),
        ("scope", "openid email profile.read"),
        ("state", "st&ate"),
        ("code_challenge", "chal"),
        ("code_challenge_method", "S256"),
        ("access_type", "offline"),
        ("prompt", "consent"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(pairs, expected);
}

#[test]
fn authorize_url_omits_empty_scope_and_pkce() {
    let base = Url::parse("https://github.example/login/oauth/authorize").unwrap();
    let req = AuthorizeRequest {
        authorization_url: &base,
        client_id: "cid",
        redirect_uri: "https://app.example/cb",
        scopes: &[],
        scope_separator: ",",
        state: "s",
        code_challenge: None,
        extra_params: &[],
    };
    let url = build_authorize_url(&req);
    let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    assert_eq!(
        keys,
        ["response_type", "client_id", "redirect_uri", "state"]
    );

    let scopes = vec!["repo".to_string(), "gist".to_string()];
    let url = build_authorize_url(&AuthorizeRequest {
        scopes: &scopes,
        ..req
    });
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "scope" && v == "repo,gist")
    );
}

// ---------------------------------------------------------------- lenient parsing

#[tokio::test]
async fn expires_in_variants() {
    for (value, expected) in [
        (json!(3600), Some(3600)),
        (json!("3600"), Some(3600)),
        (json!(null), None),
        (json!("garbage"), None),
        (json!(-1), None),
    ] {
        let server = token_server(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "a", "expires_in": value})),
        )
        .await;
        let t = exchange(&server, &ClientAuth::public("c"), &Default::default())
            .await
            .unwrap();
        assert_eq!(t.expires_in, expected, "expires_in = {value}");
    }
    let server =
        token_server(ResponseTemplate::new(200).set_body_json(json!({"access_token": "a"}))).await;
    let t = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap();
    assert_eq!(t.expires_in, None);
}

#[tokio::test]
async fn scope_variants() {
    for value in [
        json!("read write"),
        json!("read,write"),
        json!(["read", "write"]),
    ] {
        let server = token_server(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": "a", "scope": value})),
        )
        .await;
        let t = exchange(&server, &ClientAuth::public("c"), &Default::default())
            .await
            .unwrap();
        assert_eq!(t.scopes.unwrap(), ["read", "write"], "scope = {value}");
    }
}

#[tokio::test]
async fn form_encoded_token_body() {
    let server = token_server(ResponseTemplate::new(200).set_body_raw(
        "access_token=gho_abc&scope=repo%2Cgist&token_type=bearer",
        "application/x-www-form-urlencoded; charset=utf-8",
    ))
    .await;
    let t = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "gho_abc");
    assert_eq!(t.token_type.as_deref(), Some("bearer"));
    assert_eq!(t.scopes.unwrap(), ["repo", "gist"]);
}

#[tokio::test]
async fn nested_token_path() {
    let server = token_server(ResponseTemplate::new(200).set_body_json(json!({
        "ok": true,
        "access_token": "xoxb-bot",
        "team": {"id": "T1"},
        "authed_user": {
            "id": "U1",
            "access_token": "xoxp-user",
            "refresh_token": "xoxe-1",
            "expires_in": 43200,
            "scope": "chat:write,users:read",
            "token_type": "user"
        }
    })))
    .await;
    let opts = TokenRequestOptions {
        token_path: Some("/authed_user".into()),
        ..Default::default()
    };
    let t = exchange(&server, &ClientAuth::post("c", "s".into()), &opts)
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "xoxp-user");
    assert_eq!(t.refresh_token.unwrap().expose_secret(), "xoxe-1");
    assert_eq!(t.expires_in, Some(43200));
    assert_eq!(t.scopes.unwrap(), ["chat:write", "users:read"]);
    assert_eq!(t.extra.get("id"), Some(&json!("U1")));
}

#[tokio::test]
async fn ok_200_without_access_token_is_invalid_response() {
    let server =
        token_server(ResponseTemplate::new(200).set_body_json(json!({"token_type": "bearer"})))
            .await;
    let err = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidResponse(_)), "{err:?}");
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn github_200_error_bodies_are_provider_errors() {
    // Form-encoded (no Accept honoured) ...
    let server = token_server(ResponseTemplate::new(200).set_body_raw(
        "error=bad_verification_code&error_description=The+code+passed+is+incorrect+or+expired.",
        "application/x-www-form-urlencoded",
    ))
    .await;
    let err = exchange(
        &server,
        &ClientAuth::post("c", "s".into()),
        &Default::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("bad_verification_code"));
    assert_eq!(err.status(), Some(200));
    assert!(err.is_invalid_grant());
    match &err {
        OAuthError::Provider { description, .. } => assert_eq!(
            description.as_deref(),
            Some("The code passed is incorrect or expired.")
        ),
        other => panic!("unexpected {other:?}"),
    }

    // ... and JSON, on refresh.
    let server = token_server(ResponseTemplate::new(200).set_body_json(json!({
        "error": "bad_refresh_token",
        "error_description": "The refresh token passed is incorrect or expired."
    })))
    .await;
    let err = client()
        .refresh(
            &url(&server, "/token"),
            &ClientAuth::post("c", "s".into()),
            &SecretString::from("RT"),
            None,
            " ",
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("bad_refresh_token"));
    assert_eq!(err.status(), Some(200));
}

#[tokio::test]
async fn slack_ok_false_is_provider_error() {
    let server = token_server(
        ResponseTemplate::new(200)
            .set_body_json(json!({"ok": false, "error": "invalid_refresh_token"})),
    )
    .await;
    let opts = TokenRequestOptions {
        token_path: Some("/authed_user".into()),
        ..Default::default()
    };
    let err = exchange(&server, &ClientAuth::post("c", "s".into()), &opts)
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("invalid_refresh_token"));
    assert!(err.is_invalid_grant());

    let server = token_server(ResponseTemplate::new(200).set_body_json(json!({"ok": false}))).await;
    let err = exchange(&server, &ClientAuth::post("c", "s".into()), &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Provider { .. }), "{err:?}");
}

#[tokio::test]
async fn standard_400_invalid_grant() {
    let server = token_server(
        ResponseTemplate::new(400)
            .set_body_json(json!({"error": "invalid_grant", "error_description": "Bad Request"})),
    )
    .await;
    let err = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.oauth_error_code(), Some("invalid_grant"));
    assert!(err.is_invalid_grant());
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn rate_limited_with_retry_after_seconds() {
    let server = token_server(
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "7")
            .set_body_string("Too Many Requests"),
    )
    .await;
    let err = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OAuthError::Http { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    // With an OAuth error code the Retry-After is kept too.
    let server = token_server(
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "7")
            .set_body_json(json!({"error": "rate_limited"})),
    )
    .await;
    let err = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("rate_limited"));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn rate_limited_with_retry_after_http_date() {
    let when = chrono::Utc::now() + chrono::TimeDelta::seconds(120);
    let imf_fixdate = when.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let server =
        token_server(ResponseTemplate::new(429).insert_header("Retry-After", imf_fixdate.as_str()))
            .await;
    let err = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap_err();
    let delay = err.retry_after().expect("retry_after parsed");
    assert!(
        delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
        "{delay:?}"
    );

    // A date in the past means "retry now".
    let server = token_server(
        ResponseTemplate::new(503).insert_header("Retry-After", "Sun, 06 Nov 1994 08:49:37 GMT"),
    )
    .await;
    let err = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::ZERO));
}

#[tokio::test]
async fn html_503_is_http_error_with_short_excerpt() {
    let html = format!(
        "<html><body>{}</body></html>",
        "Service Unavailable ".repeat(50)
    );
    let server =
        token_server(ResponseTemplate::new(503).set_body_raw(html, "text/html; charset=utf-8"))
            .await;
    let err = exchange(&server, &ClientAuth::public("c"), &Default::default())
        .await
        .unwrap_err();
    match &err {
        OAuthError::Http {
            status,
            retry_after,
            body_excerpt,
        } => {
            assert_eq!(*status, 503);
            assert!(retry_after.is_none());
            assert!(body_excerpt.starts_with("<html>"));
            assert!(body_excerpt.chars().count() <= 200);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.oauth_error_code(), None);
}

#[tokio::test]
async fn slow_provider_times_out() {
    let server = token_server(ok_token().set_delay(Duration::from_secs(3))).await;
    let client = OAuthClient::new(OAuthClientConfig {
        request_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap();
    let err = client
        .exchange_code(
            &url(&server, "/token"),
            &ClientAuth::public("c"),
            "code",
            Some("https://app.example/cb"),
            None,
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Timeout), "{err:?}");
}

#[tokio::test]
async fn connection_refused_is_connect_error() {
    // Bind then drop a listener to get a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = Url::parse(&format!("http://127.0.0.1:{port}/token")).unwrap();
    let err = client()
        .client_credentials(
            &url,
            &ClientAuth::public("c"),
            &[],
            " ",
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Connect(_)), "{err:?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("Location", format!("{}/elsewhere", server.uri())),
        )
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ok_token())
        .expect(0)
        .mount(&server)
        .await;
    let err = exchange(
        &server,
        &ClientAuth::basic("c", "s".into()),
        &Default::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, OAuthError::Http { status: 302, .. }),
        "{err:?}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[test]
fn error_display_never_contains_body_or_secrets() {
    let err = OAuthError::Http {
        status: 500,
        retry_after: None,
        body_excerpt: "client_secret=hunter2".into(),
    };
    assert!(!err.to_string().contains("hunter2"));
}

// ---------------------------------------------------------------- other grants

#[tokio::test]
async fn refresh_sends_scope_and_extra_params() {
    let server = token_server(ok_token()).await;
    let scopes = vec!["a".to_string(), "b".to_string()];
    let opts = TokenRequestOptions {
        token_path: None,
        extra_params: vec![("resource".into(), "https://api.example".into())],
        ..TokenRequestOptions::default()
    };
    client()
        .refresh(
            &url(&server, "/token"),
            &ClientAuth::post("c", "s".into()),
            &SecretString::from("RT-old"),
            Some(&scopes),
            ",",
            &opts,
        )
        .await
        .unwrap();
    let form = form_of(&only_request(&server).await);
    assert_eq!(form_get(&form, "grant_type"), Some("refresh_token"));
    assert_eq!(form_get(&form, "refresh_token"), Some("RT-old"));
    assert_eq!(form_get(&form, "scope"), Some("a,b"));
    assert_eq!(form_get(&form, "resource"), Some("https://api.example"));
}

#[tokio::test]
async fn client_credentials_grant() {
    let server = token_server(ok_token()).await;
    let scopes = vec!["x.read".to_string()];
    let t = client()
        .client_credentials(
            &url(&server, "/token"),
            &ClientAuth::basic("c", "s".into()),
            &scopes,
            " ",
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "AT-123");
    let form = form_of(&only_request(&server).await);
    assert_eq!(form_get(&form, "grant_type"), Some("client_credentials"));
    assert_eq!(form_get(&form, "scope"), Some("x.read"));
}

#[tokio::test]
async fn json_token_request_body() {
    let server = token_server(ok_token()).await;
    let opts = TokenRequestOptions {
        extra_params: vec![("instance_id".into(), "inst-1".into())],
        format: TokenRequestFormat::Json,
        ..TokenRequestOptions::default()
    };
    let t = client()
        .exchange_code(
            &url(&server, "/token"),
            &ClientAuth::post(ID, SECRET.into()),
            "the-code",
            None,
            None,
            &opts,
        )
        .await
        .unwrap();
    assert_eq!(t.access_token.expose_secret(), "AT-123");
    let req = only_request(&server).await;
    assert_eq!(req.headers.get("content-type").unwrap(), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({
            "grant_type": "authorization_code",
            "code": "the-code",
            "client_id": ID,
            "client_secret": SECRET,
            "instance_id": "inst-1",
        })
    );

    // Refresh and Basic auth with a JSON body: credentials stay in the header.
    let server = token_server(ok_token()).await;
    client()
        .refresh(
            &url(&server, "/token"),
            &ClientAuth::basic("c", "s".into()),
            &SecretString::from("RT-old"),
            None,
            " ",
            &TokenRequestOptions {
                format: TokenRequestFormat::Json,
                ..TokenRequestOptions::default()
            },
        )
        .await
        .unwrap();
    let req = only_request(&server).await;
    assert!(req.headers.get("authorization").is_some());
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({"grant_type": "refresh_token", "refresh_token": "RT-old"})
    );
}

#[test]
fn token_request_format_serde_names() {
    for (f, s) in [
        (TokenRequestFormat::Form, "\"form\""),
        (TokenRequestFormat::Json, "\"json\""),
    ] {
        assert_eq!(serde_json::to_string(&f).unwrap(), s);
        assert_eq!(serde_json::from_str::<TokenRequestFormat>(s).unwrap(), f);
    }
    assert_eq!(TokenRequestFormat::default(), TokenRequestFormat::Form);
}

// ---------------------------------------------------------------- device flow

#[tokio::test]
async fn device_authorize_accepts_google_alias_and_defaults_interval() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/device/code"))
        .and(body_string_contains("client_id=tv-app"))
        .and(body_string_contains("scope=email+profile"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "device_code": "DC-secret",
            "user_code": "GQVQ-JKEC",
            "verification_url": "https://www.google.com/device",
            "expires_in": "1800"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let scopes = vec!["email".to_string(), "profile".to_string()];
    let d = client()
        .device_authorize(
            &url(&server, "/device/code"),
            &ClientAuth::public("tv-app"),
            &scopes,
            " ",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(d.device_code.expose_secret(), "DC-secret");
    assert_eq!(d.user_code, "GQVQ-JKEC");
    assert_eq!(d.verification_uri, "https://www.google.com/device");
    assert_eq!(d.verification_uri_complete, None);
    assert_eq!(d.expires_in, 1800);
    assert_eq!(d.interval, 5);
    assert!(!format!("{d:?}").contains("DC-secret"));
}

#[tokio::test]
async fn device_poll_mapping() {
    let cases: Vec<(u16, serde_json::Value, &str)> = vec![
        (400, json!({"error": "authorization_pending"}), "pending"),
        // GitHub answers 200 for pending / slow_down.
        (200, json!({"error": "authorization_pending"}), "pending"),
        (400, json!({"error": "slow_down"}), "slow_down"),
        (
            200,
            json!({"error": "slow_down", "interval": 10}),
            "slow_down",
        ),
        (400, json!({"error": "access_denied"}), "denied"),
        (400, json!({"error": "expired_token"}), "expired"),
        (
            200,
            json!({"access_token": "AT", "token_type": "bearer"}),
            "complete",
        ),
    ];
    for (status, body, expected) in cases {
        let server = token_server(ResponseTemplate::new(status).set_body_json(&body)).await;
        let poll = client()
            .poll_device_token(
                &url(&server, "/token"),
                &ClientAuth::public("c"),
                &SecretString::from("DC"),
                None,
                &Default::default(),
            )
            .await
            .unwrap();
        let got = match &poll {
            DevicePoll::Pending => "pending",
            DevicePoll::SlowDown => "slow_down",
            DevicePoll::Denied => "denied",
            DevicePoll::Expired => "expired",
            DevicePoll::Complete(t) => {
                assert_eq!(t.access_token.expose_secret(), "AT");
                "complete"
            }
        };
        assert_eq!(got, expected, "{status} {body}");
        let form = form_of(&only_request(&server).await);
        assert_eq!(
            form_get(&form, "grant_type"),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        assert_eq!(form_get(&form, "device_code"), Some("DC"));
        assert_eq!(form_get(&form, "client_id"), Some("c"));
    }

    // Other OAuth errors stay errors.
    let server =
        token_server(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
            .await;
    let err = client()
        .poll_device_token(
            &url(&server, "/token"),
            &ClientAuth::public("c"),
            &SecretString::from("DC"),
            None,
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("invalid_client"));
    assert_eq!(err.status(), Some(401));
}

// ---------------------------------------------------------------- revoke / userinfo

#[tokio::test]
async fn revoke_sends_token_and_hint() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    client()
        .revoke(
            &url(&server, "/revoke"),
            &ClientAuth::basic("c", "s".into()),
            &SecretString::from("RT-to-kill"),
            Some("refresh_token"),
        )
        .await
        .unwrap();
    let req = only_request(&server).await;
    let form = form_of(&req);
    assert_eq!(form_get(&form, "token"), Some("RT-to-kill"));
    assert_eq!(form_get(&form, "token_type_hint"), Some("refresh_token"));
    assert!(req.headers.get("authorization").is_some());
}

#[tokio::test]
async fn github_grant_deletion() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/applications/Iv1.abc/grant"))
        .and(header("content-type", "application/json"))
        .and(header("accept", "application/vnd.github+json"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    // Basic even though GitHub's token endpoint uses client_secret_post.
    let auth = ClientAuth::post("Iv1.abc", SecretString::from("gh-secret"));
    client()
        .revoke_github_grant(
            &url(&server, "/applications/Iv1.abc/grant"),
            &auth,
            &SecretString::from("gho_token"),
        )
        .await
        .unwrap();
    let req = only_request(&server).await;
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode("Iv1.abc:gh-secret");
    assert_eq!(
        req.headers.get("authorization").unwrap(),
        format!("Basic {expected}").as_str()
    );
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body, json!({"access_token": "gho_token"}));

    // 422 is an error with its status; no secret means nothing is sent.
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(
            ResponseTemplate::new(422).set_body_json(json!({"message": "Validation Failed"})),
        )
        .mount(&server)
        .await;
    let err = client()
        .revoke_github_grant(
            &url(&server, "/applications/x/grant"),
            &auth,
            &SecretString::from("t"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    let err = client()
        .revoke_github_grant(
            &url(&server, "/applications/x/grant"),
            &ClientAuth::public("x"),
            &SecretString::from("t"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Config(_)), "{err:?}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn revoke_errors_carry_status() {
    let server = MockServer::start().await;
    Mock::given(path("/revoke"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "30"))
        .mount(&server)
        .await;
    let err = client()
        .revoke(
            &url(&server, "/revoke"),
            &ClientAuth::public("c"),
            &SecretString::from("t"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));

    let server = MockServer::start().await;
    Mock::given(path("/revoke"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": "unsupported_token_type"})),
        )
        .mount(&server)
        .await;
    let err = client()
        .revoke(
            &url(&server, "/revoke"),
            &ClientAuth::public("c"),
            &SecretString::from("t"),
            Some("access_token"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.oauth_error_code(), Some("unsupported_token_type"));
}

#[tokio::test]
async fn userinfo_bearer_and_401() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/me"))
        .and(header("authorization", "Bearer good"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"sub": "42"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/me"))
        .and(header("authorization", "Bearer stale"))
        .respond_with(ResponseTemplate::new(401).insert_header(
            "WWW-Authenticate",
            r#"Bearer error="invalid_token", error_description="expired""#,
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/me"))
        .and(header("authorization", "Bearer plain"))
        .respond_with(ResponseTemplate::new(401).set_body_string("Unauthorized"))
        .mount(&server)
        .await;

    let me = url(&server, "/me");
    let v = client()
        .userinfo(&me, &SecretString::from("good"))
        .await
        .unwrap();
    assert_eq!(v["sub"], "42");

    let err = client()
        .userinfo(&me, &SecretString::from("stale"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.oauth_error_code(), Some("invalid_token"));

    let err = client()
        .userinfo(&me, &SecretString::from("plain"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OAuthError::Http { status: 401, .. }),
        "{err:?}"
    );

    // A caller-built header (Wix: the bare token, no scheme).
    Mock::given(method("GET"))
        .and(path("/me"))
        .and(header("authorization", "raw-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "7"})))
        .mount(&server)
        .await;
    let v = client()
        .userinfo_with_authorization(&me, &SecretString::from("raw-token"))
        .await
        .unwrap();
    assert_eq!(v["id"], "7");
}

// ---------------------------------------------------------------- redaction

#[tokio::test]
async fn debug_output_never_contains_secrets() {
    let server = token_server(ResponseTemplate::new(200).set_body_json(json!({
        "access_token": "AT-very-secret",
        "refresh_token": "RT-very-secret",
        "id_token": "IDT-very-secret",
        "bot_token": "BOT-very-secret",
        "expires_in": 60
    })))
    .await;
    let auth = ClientAuth::basic("cid", SecretString::from("CS-very-secret"));
    let t = exchange(&server, &auth, &Default::default()).await.unwrap();
    let dbg = format!("{t:?} {t:#?} {auth:?} {auth:#?}");
    for secret in [
        "AT-very-secret",
        "RT-very-secret",
        "IDT-very-secret",
        "BOT-very-secret",
        "CS-very-secret",
    ] {
        assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
    }
    assert!(dbg.contains("cid"));
    assert!(dbg.contains("bot_token")); // keys of extra are fine
}

// ---------------------------------------------------------------- properties

proptest! {
    #[test]
    fn scope_strings_round_trip(
        scopes in proptest::collection::btree_set("[!#-+\\--\\[\\]-~]{1,12}", 0..8),
        separator in prop_oneof![Just(" "), Just(","), Just("  "), Just(", ")],
    ) {
        let joined = scopes.iter().cloned().collect::<Vec<_>>().join(separator);
        let body = json!({"access_token": "a", "scope": joined}).to_string();
        let parsed = parse_token_response(Some("application/json"), body.as_bytes(), None)
            .unwrap()
            .scopes
            .unwrap();
        let parsed: std::collections::BTreeSet<String> = parsed.into_iter().collect();
        prop_assert_eq!(parsed, scopes);
    }
}
