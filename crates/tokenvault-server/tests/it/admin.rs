//! The admin console over HTTP against the real authorization server:
//! sign-in (admin keys only, a strict session cookie, rate-limited), CSRF
//! and origin checks on every form, sessions that end with their key, the
//! overview's numbers against the API, and operator actions on
//! connections, bulk actions and keys.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::flows::{html_browser, setup};
use serde_json::{Value, json};

/// An operator's browser: keeps cookies, follows no redirect (the tests
/// look at each one).
fn console_browser() -> reqwest::Client {
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
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(service: &Service, browser: &reqwest::Client, key: &str) -> reqwest::Response {
    browser
        .post(service.url("/admin/login"))
        .form(&[("api_key", key)])
        .send()
        .await
        .unwrap()
}

async fn page(service: &Service, browser: &reqwest::Client, path: &str) -> (u16, String) {
    let response = browser.get(service.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the first `name="csrf"` field on the page.
fn csrf(html: &str) -> String {
    html.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF field in {html}"))
        .to_owned()
}

/// The text of the element with `id="…"` (up to the next tag).
fn by_id(html: &str, id: &str) -> String {
    html.split(&format!(r#"id="{id}""#))
        .nth(1)
        .and_then(|rest| rest.split('>').nth(1))
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no #{id} in {html}"))
        .to_owned()
}

/// Signs in with the service's bootstrap admin key; returns the browser
/// and the session's CSRF token.
async fn operator(service: &Service) -> (reqwest::Client, String) {
    let browser = console_browser();
    let response = sign_in(service, &browser, API_KEY).await;
    assert_eq!(response.status(), 303);
    let (status, html) = page(service, &browser, "/admin").await;
    assert_eq!(status, 200, "{html}");
    let token = csrf(&html);
    (browser, token)
}

async fn post_form(
    service: &Service,
    browser: &reqwest::Client,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    browser
        .post(service.url(path))
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// Creates an API key from the console; returns the key shown once.
async fn create_key(
    service: &Service,
    browser: &reqwest::Client,
    csrf: &str,
    name: &str,
    scope: &str,
) -> String {
    let response = post_form(
        service,
        browser,
        "/admin/keys",
        &[("csrf", csrf), ("name", name), ("scope", scope)],
    )
    .await;
    assert_eq!(response.status(), 201);
    let html = response.text().await.unwrap();
    html.split(r#"id="new-key" readonly value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no new key on {html}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_takes_an_admin_key_and_gives_a_strict_session_cookie() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let browser = console_browser();

    // Signed out: pages send the browser to the sign-in page; programs
    // get a 401.
    let response = browser.get(service.url("/admin")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/admin/login");
    let program = service
        .http
        .get(service.url("/admin/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(program.status(), 401);
    let (status, login) = page(&service, &browser, "/admin/login").await;
    assert_eq!(status, 200);
    assert!(login.contains(r#"type="password""#), "{login}");

    for (key, status, says) in [
        ("", 400, "Enter an admin API key"),
        ("tvk_nope_nope", 401, "not a valid API key"),
    ] {
        let refused = sign_in(&service, &browser, key).await;
        assert_eq!(refused.status(), status, "{key:?}");
        assert!(refused.headers().get("set-cookie").is_none());
        assert!(refused.text().await.unwrap().contains(says));
    }

    let signed_in = sign_in(&service, &browser, API_KEY).await;
    assert_eq!(signed_in.status(), 303);
    assert_eq!(location(&signed_in), "/admin");
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain http outside production: {cookie}"
    );
    assert!(!cookie.contains(API_KEY), "the cookie is not the key");

    let overview = browser.get(service.url("/admin")).send().await.unwrap();
    assert_eq!(overview.status(), 200);
    let headers = overview.headers().clone();
    let policy = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let html = overview.text().await.unwrap();
    assert!(!html.contains(API_KEY), "no page shows a whole key");

    // A key without the admin scope cannot sign in.
    let token = csrf(&html);
    let reader = create_key(&service, &browser, &token, "dashboard", "read-tokens").await;
    assert!(reader.starts_with("tvk_"), "{reader}");
    let refused = sign_in(&service, &console_browser(), &reader).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("read-tokens scope"));
    // The keys page lists it by id, never whole.
    let (_, keys) = page(&service, &browser, "/admin/keys").await;
    assert!(
        keys.contains("dashboard") && !keys.contains(&reader),
        "{keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_forms_need_the_csrf_token_and_our_origin() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let (browser, token) = operator(&service).await;

    let keys_before = service.state.console.keys.list().await.unwrap().len();
    /// (path, form fields, a header the browser sent)
    type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<(&'a str, &'a str)>);
    let attempts: [Attempt; 5] = [
        (
            "/admin/keys",
            vec![("name", "sneaky"), ("scope", "admin")],
            None,
        ),
        (
            "/admin/keys",
            vec![
                ("csrf", "not-the-token"),
                ("name", "sneaky"),
                ("scope", "admin"),
            ],
            None,
        ),
        (
            "/admin/keys",
            vec![("csrf", &token), ("name", "sneaky"), ("scope", "admin")],
            Some(("origin", "http://evil.test")),
        ),
        (
            "/admin/keys",
            vec![("csrf", &token), ("name", "sneaky"), ("scope", "admin")],
            Some(("sec-fetch-site", "cross-site")),
        ),
        ("/admin/logout", vec![], None),
    ];
    for (path, fields, origin) in attempts {
        let mut request = browser.post(service.url(path)).form(&fields);
        if let Some((name, value)) = origin {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{path} {fields:?} {origin:?}");
        assert_eq!(response.headers()["tokenvault-error"], "csrf_failed");
    }
    assert_eq!(
        service.state.console.keys.list().await.unwrap().len(),
        keys_before,
        "no key was created"
    );
    let (status, _) = page(&service, &browser, "/admin").await;
    assert_eq!(status, 200, "still signed in");

    // With its token, the form works: signing out ends the session.
    let out = post_form(&service, &browser, "/admin/logout", &[("csrf", &token)]).await;
    assert_eq!(out.status(), 303);
    assert_eq!(location(&out), "/admin/login?why=signed_out");
    let after = browser.get(service.url("/admin")).send().await.unwrap();
    assert_eq!(after.status(), 303);
    assert!(location(&after).starts_with("/admin/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_console_sessions() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let (admin, token) = operator(&service).await;

    // Revoked from the console: at once.
    let ops = create_key(&service, &admin, &token, "ops", "admin").await;
    let other = console_browser();
    assert_eq!(sign_in(&service, &other, &ops).await.status(), 303);
    assert_eq!(page(&service, &other, "/admin").await.0, 200);
    let id = ops.split('_').nth(1).unwrap().to_owned();
    let revoked = post_form(
        &service,
        &admin,
        &format!("/admin/keys/{id}/revoke"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(revoked.status(), 303);
    let kicked = other.get(service.url("/admin")).send().await.unwrap();
    assert_eq!(kicked.status(), 303);
    assert_eq!(location(&kicked), "/admin/login?why=revoked");
    assert_eq!(
        sign_in(&service, &console_browser(), &ops).await.status(),
        401
    );

    // Revoked elsewhere (the CLI, another instance): within the key
    // cache's 5 s.
    let second = create_key(&service, &admin, &token, "ops-2", "admin").await;
    let third = console_browser();
    assert_eq!(sign_in(&service, &third, &second).await.status(), 303);
    assert_eq!(page(&service, &third, "/admin").await.0, 200);
    let second_id = second.split('_').nth(1).unwrap().to_owned();
    service
        .state
        .console
        .keys
        .revoke(&second_id, chrono::Utc::now())
        .await
        .unwrap();
    let deadline = Instant::now() + tokenvault_server::http::KEY_CACHE_TTL + Duration::from_secs(2);
    loop {
        let response = third.get(service.url("/admin")).send().await.unwrap();
        if response.status() == 303 {
            assert_eq!(location(&response), "/admin/login?why=revoked");
            break;
        }
        assert!(Instant::now() < deadline, "the session outlived its key");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bootstrap key's own session is untouched.
    assert_eq!(page(&service, &admin, "/admin").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_are_limited_per_address() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let browser = console_browser();
    for attempt in 0..tokenvault_server::http::admin::LOGIN_ATTEMPTS_PER_MINUTE {
        let response = sign_in(&service, &browser, "tvk_guess_guess").await;
        assert_eq!(response.status(), 401, "attempt {attempt}");
    }
    // Over the limit, even the right key waits: nothing is checked.
    let limited = sign_in(&service, &browser, API_KEY).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_some());
    assert_eq!(
        limited.headers()["tokenvault-error"],
        "too_many_login_attempts"
    );
    assert!(limited.headers().get("set-cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_find_needs_reauth_users_and_act_on_their_connections() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    for user in ["ann", "bob", "cyd"] {
        connect_with_ttl(&peer, &service, user, "basic-app", 3600).await;
    }
    connect_with_ttl(&peer, &service, "dee", "pkce-app", 3600).await;
    // The peer revokes every grant; a refresh finds out for ann.
    peer.hook("revoke-grants", json!({})).await;
    let forced = service
        .post_json("/v1/users/ann/connections/basic-app/refresh", json!({}))
        .await;
    assert_eq!(forced.status(), 409);

    let (browser, token) = operator(&service).await;
    // The overview's numbers are the API's.
    let summary: Value = service
        .get_json("/v1/connections/summary")
        .await
        .json()
        .await
        .unwrap();
    let (_, overview) = page(&service, &browser, "/admin").await;
    assert_eq!(by_id(&overview, "total"), summary["total"].to_string());
    assert_eq!(
        by_id(&overview, "due"),
        summary["due_within_1h"].to_string()
    );
    assert_eq!(by_id(&overview, "failing"), summary["failing"].to_string());
    assert_eq!(summary["by_status"]["needs_reauth"], 1);
    assert!(
        overview.contains(r#"data-status="needs_reauth"><a href="/admin/connections?integration=basic-app&amp;status=needs_reauth">1</a>"#)
            || overview.contains(r#"data-status="needs_reauth"><a href="/admin/connections?integration=basic-app&#38;status=needs_reauth">1</a>"#),
        "{overview}"
    );

    // Find who needs re-auth.
    let (status, list) = page(&service, &browser, "/admin/connections?status=needs_reauth").await;
    assert_eq!(status, 200);
    assert!(
        list.contains(">ann</a>") && !list.contains(">bob</a>"),
        "{list}"
    );
    let (_, by_prefix) = page(&service, &browser, "/admin/connections?user=b").await;
    assert!(
        by_prefix.contains(">bob</a>") && !by_prefix.contains(">ann</a>"),
        "{by_prefix}"
    );
    // A bad filter is explained, not a 5xx.
    let (status, bad) = page(&service, &browser, "/admin/connections?status=sleeping").await;
    assert_eq!(status, 400);
    assert!(bad.contains("role=\"alert\""), "{bad}");

    let ann_id = connection_id(&service, "ann").await;
    let (status, detail) = page(&service, &browser, &format!("/admin/connections/{ann_id}")).await;
    assert_eq!(status, 200);
    assert!(detail.contains(r#"id="status">needs_reauth"#), "{detail}");
    assert!(
        detail.contains("<td>needs_reauth</td>"),
        "the history: {detail}"
    );

    // A reconnect link, completed by the user: same connection, connected.
    let created = post_form(
        &service,
        &browser,
        &format!("/admin/connections/{ann_id}/reconnect-link"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(created.status(), 200);
    let html = created.text().await.unwrap();
    let link = html
        .split(r#"id="reconnect-link" readonly value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    assert!(link.starts_with(&service.url("/connect/")), "{link}");
    let user_page = html_browser(None).get(&link).send().await.unwrap();
    let user_html = user_page.text().await.unwrap();
    assert!(
        user_html.contains("Reconnect your OpenID Connect account"),
        "{user_html}"
    );
    let finished = browser_done(&link).await;
    assert_eq!(finished, 200);
    let (_, detail) = page(&service, &browser, &format!("/admin/connections/{ann_id}")).await;
    assert!(detail.contains(r#"id="status">connected"#), "{detail}");
    assert!(detail.contains("<td>reconnected</td>"), "{detail}");

    // Refresh now: bob's grant is gone at the peer, so the refresh is
    // refused, shown as a page (409), and bob turns needs_reauth.
    let bob_id = connection_id(&service, "bob").await;
    let refused = post_form(
        &service,
        &browser,
        &format!("/admin/connections/{bob_id}/refresh"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(refused.status(), 409);
    assert_eq!(refused.headers()["tokenvault-error"], "needs_reauth");
    // ann's new grant refreshes.
    let refreshed = post_form(
        &service,
        &browser,
        &format!("/admin/connections/{ann_id}/refresh"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(refreshed.status(), 303);
    assert_eq!(
        location(&refreshed),
        format!("/admin/connections/{ann_id}?done=refreshed")
    );
    let (_, detail) = page(&service, &browser, &location(&refreshed)).await;
    assert!(detail.contains("The connection was refreshed."), "{detail}");
    assert!(detail.contains("<td>refresh_forced</td>"), "{detail}");

    // Revoke, after a confirmation page.
    let (status, confirm) = page(
        &service,
        &browser,
        &format!("/admin/connections/{bob_id}/revoke"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Revoke bob"), "{confirm}");
    let revoked = post_form(
        &service,
        &browser,
        &format!("/admin/connections/{bob_id}/revoke"),
        &[("csrf", &csrf(&confirm))],
    )
    .await;
    assert_eq!(revoked.status(), 303);
    let status: Value = service
        .get_json("/v1/users/bob/connections/basic-app")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "disconnected", "{status}");
    // Unknown ids are a 404 page.
    assert_eq!(
        page(&service, &browser, "/admin/connections/not-an-id")
            .await
            .0,
        404
    );
    assert_eq!(
        page(
            &service,
            &browser,
            "/admin/connections/00000000-0000-4000-8000-000000000000"
        )
        .await
        .0,
        404
    );
}

/// The id of `user`'s basic-app connection.
async fn connection_id(service: &Service, user: &str) -> String {
    let page: Value = service
        .get_json(&format!(
            "/v1/connections?user_id_prefix={user}&integration=basic-app"
        ))
        .await
        .json()
        .await
        .unwrap();
    page["connections"][0]["id"].as_str().unwrap().to_owned()
}

/// Opens a connect link as a program would (straight to the provider,
/// following redirects back to our callback); the final status.
async fn browser_done(link: &str) -> u16 {
    browser(None)
        .get(link)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_are_listed_and_cancelled_from_the_console() {
    let peer = Peer::start();
    // Bulk actions need an API base URL: the peer's, for `oidc`.
    let providers = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        providers.path(),
        format!(
            "[providers.peer-public]\nalias = \"oidc\"\ntoken_auth_method = \"none\"\n\n\
             [providers.peer-post]\nalias = \"oidc\"\ntoken_auth_method = \"client_secret_post\"\n\n\
             [providers.oidc]\napi_base_url = \"{}/\"\n",
            peer.issuer
        ),
    )
    .unwrap();
    let service = setup(&peer, |config| {
        config.providers_file = Some(providers.path().to_path_buf());
    })
    .await;
    connect_with_ttl(&peer, &service, "fan-1", "basic-app", 3600).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let created: Value = service
        .post_json(
            "/v1/bulk-actions",
            json!({"integration": "basic-app", "users": ["fan-1"],
                   "request": {"method": "GET", "path": "me"}, "not_before": later}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let (browser, token) = operator(&service).await;
    let (_, list) = page(&service, &browser, "/admin/bulk").await;
    assert!(list.contains(&format!("/admin/bulk/{id}")), "{list}");
    let (status, detail) = page(&service, &browser, &format!("/admin/bulk/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        detail.contains(r#"data-live="state">scheduled"#),
        "{detail}"
    );
    assert!(
        detail.contains(&format!(r#"data-live-url="/admin/bulk/{id}/live""#)),
        "{detail}"
    );
    let live: Value = browser
        .get(service.url(&format!("/admin/bulk/{id}/live")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(live["state"], "scheduled");
    assert_eq!(live["counts"]["pending"], 1);

    let cancelled = post_form(
        &service,
        &browser,
        &format!("/admin/bulk/{id}/cancel"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(cancelled.status(), 303);
    let api: Value = service
        .get_json(&format!("/v1/bulk-actions/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(api["state"], "cancelled", "{api}");
    // Cancelling twice is explained.
    let again = post_form(
        &service,
        &browser,
        &format!("/admin/bulk/{id}/cancel"),
        &[("csrf", &token)],
    )
    .await;
    assert_eq!(again.status(), 409);
    assert_eq!(page(&service, &browser, "/admin/bulk/nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_a_clear_answer_and_is_never_run() {
    let peer = Peer::start();
    let service = setup(&peer, |_| {}).await;
    let (browser, token) = operator(&service).await;
    for (path, status) in [
        ("/admin?done=refreshed&done=%ZZ", 200),
        ("/admin/connections?user=%00", 400),
        ("/admin/connections?user=a&user=b", 400),
        ("/admin/connections?integration=NOT%20A%20KEY", 400),
        ("/admin/connections?after=garbage", 400),
        ("/admin/bulk/..%2F..%2Fetc", 404),
        ("/admin/login?why=%3Cscript%3E", 200),
    ] {
        let (got, html) = page(&service, &browser, path).await;
        assert_eq!(got, status, "{path}: {html}");
        assert!(html.contains("<html"), "{path}: a page");
        assert!(!html.contains("<script>"), "{path}: {html}");
    }
    // A key name is text, never markup.
    let response = post_form(
        &service,
        &browser,
        "/admin/keys",
        &[
            ("csrf", &token),
            ("name", "<script>alert(1)</script>"),
            ("scope", "read-tokens"),
        ],
    )
    .await;
    assert_eq!(response.status(), 201);
    let html = response.text().await.unwrap();
    assert!(!html.contains("<script>alert(1)"), "{html}");
    assert!(
        html.contains("&#60;script&#62;alert(1)") || html.contains("&lt;script&gt;alert(1)"),
        "{html}"
    );
    // Bad key input is explained beside the form; nothing is stored.
    let before = service.state.console.keys.list().await.unwrap().len();
    for fields in [
        vec![("csrf", token.as_str()), ("name", ""), ("scope", "admin")],
        vec![("csrf", token.as_str()), ("name", "x"), ("scope", "root")],
    ] {
        let response = post_form(&service, &browser, "/admin/keys", &fields).await;
        assert_eq!(response.status(), 400, "{fields:?}");
        assert!(response.text().await.unwrap().contains("role=\"alert\""));
    }
    assert_eq!(
        service.state.console.keys.list().await.unwrap().len(),
        before
    );
    // A form over the size limit is refused without being read whole.
    let huge = "x".repeat(64 * 1024);
    let response = post_form(
        &service,
        &browser,
        "/admin/keys",
        &[("csrf", &token), ("name", &huge)],
    )
    .await;
    assert_eq!(response.status(), 413);
}
