//! The Connect UI pages over HTTP, against the real authorization server:
//! the connect page and the picker, the result pages (reload-safe), expired
//! and used links, the theme, and that programs still get JSON.

use crate::common::*;
use crate::flows::{APP_ORIGIN, html_browser, setup};
use serde_json::{Value, json};

async fn session(service: &Service, body: Value) -> (String, String) {
    let response = service.post_json("/v1/connect-sessions", body).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    (
        created["id"].as_str().unwrap().to_owned(),
        created["connect_url"].as_str().unwrap().to_owned(),
    )
}

fn csp(response: &reqwest::Response) -> String {
    response.headers()[reqwest::header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The value of `href` of the first link whose URL contains `needle`.
fn link_containing(page: &str, needle: &str) -> String {
    page.split("href=\"")
        .skip(1)
        // Unescaped as a browser would: askama writes `&` as `&#38;`.
        .map(|rest| {
            rest.split('"')
                .next()
                .unwrap()
                .replace("&#38;", "&")
                .replace("&amp;", "&")
        })
        .find(|href| href.contains(needle))
        .unwrap_or_else(|| panic!("no link with {needle} in {page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_session_shows_the_app_the_integration_and_the_access_then_connects_once() {
    let peer = Peer::start();
    let service = setup(&peer, |config| {
        config.ui_app_name = "Fan Club".into();
        config.ui_accent_color = "#AA3300".into();
    })
    .await;
    let (id, url) = session(
        &service,
        json!({"user_id": "fan-1", "integration": "basic-app", "connect_ui": "page",
               "scopes": ["openid", "email", "api:read"]}),
    )
    .await;

    let browser = html_browser(None);
    let page = browser.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = csp(&page);
    for directive in [
        "frame-ancestors 'none'",
        "script-src 'self'",
        "style-src 'self'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("Fan Club"), "{html}");
    assert!(html.contains("Continue to OpenID Connect"), "{html}");
    // Scopes in plain words, the raw scope as a tooltip; unknown ones raw.
    assert!(
        html.contains(r#"<span title="email">See your email address</span>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<span title="api:read">api:read</span>"#),
        "{html}"
    );
    assert!(html.len() < 50 * 1024);

    // Showing the page did not use up the link: a reload shows it again.
    assert_eq!(browser.get(&url).send().await.unwrap().status(), 200);
    let theme = reqwest::get(service.url("/ui/theme.css")).await.unwrap();
    assert!(theme.text().await.unwrap().contains("--accent: #aa3300"));

    // The button: the provider, the callback, the result page.
    let start = link_containing(&html, "/start?integration=basic-app");
    let done = browser.get(&start).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(done.url().path(), format!("/connect/{id}/result"));
    let text = done.text().await.unwrap();
    assert!(
        text.contains("OpenID Connect connected") && text.contains("Fan Club"),
        "{text}"
    );
    assert!(connection_exists(&service, "fan-1", "basic-app").await);

    // Reload-safe: the result page, and the link itself, show the same.
    for again in [service.url(&format!("/connect/{id}/result")), url.clone()] {
        let shown = browser.get(&again).send().await.unwrap();
        assert_eq!(shown.status(), 200, "{again}");
        assert!(
            shown
                .text()
                .await
                .unwrap()
                .contains("OpenID Connect connected")
        );
    }
    // A program asking the link gets the outcome as JSON, no token in it.
    let outcome: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(outcome["status"], "connected");
    assert_eq!(outcome["integration"], "basic-app");
    assert!(
        outcome["connection_id"]
            .as_str()
            .is_some_and(|id| id.len() > 10)
    );
    assert_eq!(
        peer.stats().await["token_successes"]["authorization_code"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_picker_offers_several_integrations_and_connects_the_one_chosen() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let (id, url) = session(
        &service,
        json!({"user_id": "fan-2", "integrations": ["basic-app", "post-app"]}),
    )
    .await;
    let browser = html_browser(None);
    let html = browser
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Choose an account to connect"), "{html}");
    let post = link_containing(&html, "integration=post-app");
    link_containing(&html, "integration=basic-app");

    // A choice the session does not offer is refused and does not use up the link.
    let wrong = browser
        .get(service.url(&format!("/connect/{id}/start?integration=pkce-app")))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    assert!(wrong.text().await.unwrap().contains("invalid_integration"));

    let done = browser.get(&post).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(connection_exists(&service, "fan-2", "post-app").await);
    assert!(!connection_exists(&service, "fan-2", "basic-app").await);
    // The other button now leads to the result, not to a second flow.
    let basic = link_containing(&html, "integration=basic-app");
    let again = browser.get(&basic).send().await.unwrap();
    assert!(again.text().await.unwrap().contains("connected"));
    assert!(!connection_exists(&service, "fan-2", "basic-app").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_expired_and_used_links_each_say_what_happened() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;

    // Denied at the provider: the page says so, and so does the link later.
    peer.hook("config", json!({"interaction": "deny"})).await;
    let (_, url) = session(
        &service,
        json!({"user_id": "fan-3", "integration": "basic-app"}),
    )
    .await;
    let browser = html_browser(None);
    let denied = browser.get(&url).send().await.unwrap();
    assert_eq!(denied.status(), 400);
    assert!(
        denied
            .text()
            .await
            .unwrap()
            .contains("Connection cancelled")
    );
    let later = browser.get(&url).send().await.unwrap();
    assert_eq!(later.status(), 200);
    let text = later.text().await.unwrap();
    assert!(
        text.contains("Connection cancelled") && text.contains("access_denied"),
        "{text}"
    );
    peer.hook("config", json!({"interaction": "approve"})).await;

    // Unknown (or expired) link.
    let unknown = browser
        .get(service.url("/connect/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    assert!(
        unknown
            .text()
            .await
            .unwrap()
            .contains("This link has expired")
    );

    // Opened, never finished (the user left at the provider): used.
    let (_, url) = session(
        &service,
        json!({"user_id": "fan-4", "integration": "basic-app"}),
    )
    .await;
    let at_provider = html_browser(Some(peer.issuer.clone()))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(at_provider.status(), 302);
    let used = browser.get(&url).send().await.unwrap();
    assert_eq!(used.status(), 400);
    assert!(used.text().await.unwrap().contains("already used"));
    // A program gets the stable error code, as before.
    let json: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(json["error"], "invalid_state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_can_be_the_page_and_a_session_can_still_go_direct() {
    let peer = Peer::start();
    let service = setup(&peer, |config| {
        config.connect_ui = tokenvault_server::config::ConnectUi::Page;
    })
    .await;
    let (_, page_url) = session(
        &service,
        json!({"user_id": "fan-5", "integration": "basic-app"}),
    )
    .await;
    let stopping = html_browser(Some(peer.issuer.clone()));
    assert_eq!(stopping.get(&page_url).send().await.unwrap().status(), 200);
    let (_, direct) = session(
        &service,
        json!({"user_id": "fan-5", "integration": "basic-app", "connect_ui": "direct"}),
    )
    .await;
    let sent = stopping.get(&direct).send().await.unwrap();
    assert_eq!(sent.status(), 302);
    assert!(location(&sent).starts_with(&peer.issuer));
}

#[tokio::test]
async fn a_theme_that_cannot_be_shown_safely_is_refused_at_start() {
    for (accent, logo) in [
        ("red", None),
        ("#12345", None),
        ("#123456", Some("javascript:alert(1)")),
    ] {
        let config = tokenvault_server::config::Config {
            ui_accent_color: accent.into(),
            ui_logo_url: logo.map(|raw| url::Url::parse(raw).unwrap()),
            ..Default::default()
        };
        assert!(
            tokenvault_server::http::pages::Theme::from_config(&config).is_err(),
            "{accent} {logo:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_renews_the_same_connection_and_says_so() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let connection_id = |outcome: &Value| outcome["connection_id"].as_str().unwrap().to_owned();

    // Nothing to renew yet: refused, nothing stored.
    let refused = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "fan-r", "integration": "basic-app", "reconnect": true}),
        )
        .await;
    assert_eq!(refused.status(), 404);
    assert_eq!(
        refused.headers()["tokenvault-error"],
        "connection_not_found"
    );
    let picker = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "fan-r", "integrations": ["basic-app", "post-app"], "reconnect": true}),
        )
        .await;
    assert_eq!(picker.status(), 400);

    // First connection, straight through.
    let (_, url) = session(
        &service,
        json!({"user_id": "fan-r", "integration": "basic-app"}),
    )
    .await;
    let browser = html_browser(None);
    browser.get(&url).send().await.unwrap();
    let first: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(first["status"], "connected");

    // The reconnect link shows its own page; the flow keeps the id.
    let (id, url) = session(
        &service,
        json!({"user_id": "fan-r", "integration": "basic-app", "reconnect": true}),
    )
    .await;
    let html = browser
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("Reconnect your OpenID Connect account"),
        "{html}"
    );
    let done = browser
        .get(link_containing(&html, "/start?integration=basic-app"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.url().path(), format!("/connect/{id}/result"));
    assert!(
        done.text()
            .await
            .unwrap()
            .contains("OpenID Connect reconnected")
    );
    let second: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(second["status"], "connected");
    assert_eq!(connection_id(&second), connection_id(&first));
    assert_eq!(
        peer.stats().await["token_successes"]["authorization_code"],
        2
    );

    // The token read works on the renewed grant.
    let token = service
        .get_json("/v1/users/fan-r/connections/basic-app/token")
        .await;
    assert_eq!(token.status(), 200);

    // The history says what happened: created, then reconnected.
    let history: Value = service
        .get_json("/v1/users/fan-r/connections/basic-app/events")
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reconnected", "created"], "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_popup_ends_on_a_result_page_that_posts_only_to_an_allowed_origin() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let helper = reqwest::get(service.url("/connect.js")).await.unwrap();
    assert!(
        helper.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        helper
            .text()
            .await
            .unwrap()
            .contains("tokenvault.connect = connect")
    );

    let (id, url) = session(
        &service,
        json!({"user_id": "fan-p", "integrations": ["basic-app", "post-app"],
               "redirect_to": format!("{APP_ORIGIN}/done")}),
    )
    .await;
    let browser = html_browser(None);

    // A page on a foreign origin (or a hostile value) gets nothing, and
    // the link is not used up.
    for foreign in [
        "https://evil.test",
        "http://app.test.evil.test",
        "null",
        "javascript:x",
    ] {
        let refused = browser
            .get(format!("{url}?popup={}", urlencode(foreign)))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{foreign}");
        assert!(!refused.text().await.unwrap().contains("tv-outcome"));
        let program = reqwest::get(format!("{url}?popup={}", urlencode(foreign)))
            .await
            .unwrap();
        assert_eq!(program.headers()["tokenvault-error"], "invalid_redirect_to");
    }

    // From the allowed origin: the picker's buttons carry the popup along,
    // and the flow ends on the result page (not redirect_to), which hands
    // the outcome to /ui/popup.js for that origin only.
    let html = browser
        .get(format!("{url}?popup={}", urlencode(APP_ORIGIN)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start = link_containing(&html, "integration=post-app");
    assert!(start.contains("popup=http%3A%2F%2Fapp.test"), "{start}");
    let done = browser.get(&start).send().await.unwrap();
    assert_eq!(done.url().path(), format!("/connect/{id}/result"));
    assert!(csp(&done).contains("script-src 'self'"));
    let page = done.text().await.unwrap();
    let outcome: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    for expected in [
        r#"<script src="/ui/popup.js"></script>"#.to_owned(),
        format!(r#"data-origin="{APP_ORIGIN}""#),
        r#"data-status="connected""#.to_owned(),
        r#"data-integration="post-app""#.to_owned(),
        format!(
            r#"data-connection-id="{}""#,
            outcome["connection_id"].as_str().unwrap()
        ),
    ] {
        // In the page's body, not its title.
        let body = page.split_once("<main").unwrap().1;
        assert!(body.contains(&expected), "{expected} missing:\n{page}");
    }
    let script = reqwest::get(service.url("/ui/popup.js")).await.unwrap();
    assert!(script.text().await.unwrap().contains("postMessage"));
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
