//! The catalog's tests: every built-in entry, overlays, resolution errors,
//! discovery.

use super::resolve::*;
use super::*;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const REQUIRED: &[&str] = &[
    "spotify",
    "tidal",
    "tidal-device",
    "google",
    "youtube",
    "google-mail",
    "google-calendar",
    "google-search-console",
    "discord",
    "github",
    "gitlab",
    "asana",
    "zoom",
    "bing-webmaster",
    "wordpress",
    "wix",
    "microsoft",
    "outlook",
    "microsoft-teams",
    "onedrive",
    "sharepoint",
    "linkedin",
    "clickup",
    "miro",
    "webflow",
    "typeform",
    "calendly",
    "pipedrive",
    "reddit",
    "x",
    "pinterest",
    "bitbucket",
    "zendesk",
    "salesforce",
    "jira",
    "confluence",
    "twitch",
    "monday",
    "slack",
    "hubspot",
    "intercom",
    "shopify",
    "notion",
    "linear",
    "airtable",
    "strava",
    "figma",
    "box",
    "dropbox",
    "xero",
    "quickbooks",
    "docusign",
    "zoho",
    "stripe-connect",
    "tiktok",
    "oidc",
];

fn scopes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn err_text(result: Result<Catalog, CatalogError>) -> String {
    result.expect_err("expected an error").to_string()
}

#[test]
fn builtin_catalog_loads_with_every_required_key() {
    let catalog = Catalog::builtin();
    for key in REQUIRED {
        let ready = catalog.get(key).is_some();
        let pending = catalog.pending_discovery().any(|p| p.key == *key);
        assert!(ready || pending, "missing built-in provider `{key}`");
    }
    // Everything but the generic OIDC entry is usable as is.
    assert_eq!(catalog.len(), REQUIRED.len() - 1);
    let pending: Vec<_> = catalog
        .pending_discovery()
        .map(|p| p.key.as_str())
        .collect();
    assert_eq!(pending, ["oidc"]);

    for (key, spec) in catalog.iter() {
        assert_eq!(spec.key, key);
        assert!(spec.api_base_url.is_some(), "`{key}` has no api_base_url");
        for url in [&spec.authorization_url, &spec.token_url, &spec.refresh_url] {
            assert_eq!(url.scheme(), "https", "`{key}`: {url}");
        }
        if spec.refresh_token_rotates {
            assert!(spec.refresh_tokens, "`{key}`");
        }
        // Each entry has its own icon colour in the Connect UI.
        assert!(spec.brand_color.is_some(), "`{key}` has no brand_color");
        // Bing Webmaster Tools has no profile endpoint; monday.com's and
        // Linear's are GraphQL over POST only, Dropbox's a POST RPC.
        // Xero and Zoho keep the account from the ID token instead (no
        // profile endpoint read in their documentation).
        if ![
            "bing-webmaster",
            "monday",
            "linear",
            "dropbox",
            "xero",
            "zoho",
        ]
        .contains(&key)
        {
            assert!(
                spec.userinfo_url.is_some() && spec.profile.is_some(),
                "`{key}`"
            );
        }
    }
}

#[test]
fn builtin_entries_match_the_documented_behaviour() {
    let c = Catalog::builtin();
    let spotify = c.get("spotify").unwrap();
    assert_eq!(
        spotify.token_auth_method,
        TokenAuthMethod::ClientSecretBasic
    );
    assert_eq!(spotify.refresh_url, spotify.token_url);

    let github = c.get("github").unwrap();
    assert!(!github.refresh_tokens);
    assert_eq!(github.revocation_style, RevocationStyle::GithubGrant);
    assert_eq!(
        github.revocation_url_for("Iv1.abc 1").unwrap().as_str(),
        "https://api.github.com/applications/Iv1.abc%201/grant"
    );

    let google = c.get("google").unwrap();
    assert_eq!(google.authorize_params["access_type"], "offline");
    assert_eq!(
        google.issuer.as_deref(),
        Some("https://accounts.google.com")
    );
    assert_eq!(
        google.revocation_url_for("x").unwrap(),
        google.revocation_url.clone().unwrap()
    );

    let wix = c.get("wix").unwrap();
    assert_eq!(wix.token_request_format, TokenRequestFormat::Json);
    assert_eq!(wix.authorize_style, AuthorizeStyle::WixInstaller);
    assert_eq!(wix.api_auth_scheme, ApiAuthScheme::Raw);
    assert!(c.get("tidal").unwrap().refresh_sends_scope);
    // The device variant is TIDAL plus the device endpoint.
    let tidal_device = c.get("tidal-device").unwrap();
    assert_eq!(
        tidal_device
            .device_authorization_url
            .as_ref()
            .unwrap()
            .as_str(),
        "https://auth.tidal.com/v1/oauth2/device_authorization"
    );
    assert_eq!(
        ProviderSpec {
            key: "tidal".into(),
            display_name: "TIDAL".into(),
            alias_of: None,
            device_authorization_url: None,
            ..tidal_device.clone()
        },
        *c.get("tidal").unwrap()
    );
    for (key, spec) in c.iter() {
        if !matches!(key, "wix" | "tidal" | "tidal-device") {
            assert_eq!(spec.authorize_style, AuthorizeStyle::Oauth2, "{key}");
            // monday.com's API takes `Authorization: <token>` too.
            if key != "monday" {
                assert_eq!(spec.api_auth_scheme, ApiAuthScheme::Bearer, "{key}");
            }
            assert!(!spec.refresh_sends_scope, "{key}");
        }
    }
    assert_eq!(wix.default_expires_in, Some(Duration::from_secs(300)));
    assert_eq!(wix.refresh_buffer, Duration::from_secs(60));
    assert!(
        c.get("wordpress")
            .unwrap()
            .revocation_url_for("x")
            .is_none()
    );
}

#[test]
fn alias_inherits_token_url_but_overrides_scopes() {
    let c = Catalog::builtin();
    let google = c.get("google").unwrap();
    for key in [
        "youtube",
        "google-mail",
        "google-calendar",
        "google-search-console",
    ] {
        let alias = c.get(key).unwrap();
        assert_eq!(alias.alias_of.as_deref(), Some("google"));
        assert_eq!(alias.token_url, google.token_url, "{key}");
        assert_eq!(alias.authorization_url, google.authorization_url, "{key}");
        assert_eq!(alias.authorize_params, google.authorize_params, "{key}");
        assert_eq!(alias.profile, google.profile, "{key}");
        assert_ne!(alias.default_scopes, google.default_scopes, "{key}");
        assert_ne!(alias.display_name, google.display_name, "{key}");
        assert_ne!(alias.api_base_url, google.api_base_url, "{key}");
    }
    assert!(
        c.get("youtube")
            .unwrap()
            .default_scopes
            .contains(&"https://www.googleapis.com/auth/youtube.readonly".to_owned())
    );
}

#[test]
fn user_override_of_one_field_keeps_the_rest() {
    let before = Catalog::builtin();
    let after = Catalog::builtin()
        .merge_toml_str(
            r#"
            [providers.spotify]
            api_base_url = "http://localhost:8080/spotify"

            [providers.google]
            token_url = "https://google-proxy.example/token"

            [providers.discord.profile]
            email = "/mail"
            "#,
        )
        .unwrap();

    let (old, new) = (
        before.get("spotify").unwrap(),
        after.get("spotify").unwrap(),
    );
    assert_eq!(
        new.api_base_url.as_ref().unwrap().as_str(),
        "http://localhost:8080/spotify"
    );
    assert_eq!(
        ProviderSpec {
            api_base_url: old.api_base_url.clone(),
            ..new.clone()
        },
        *old
    );

    // Aliases see the overridden base entry, but keep their own fields.
    let youtube = after.get("youtube").unwrap();
    assert_eq!(
        youtube.token_url.as_str(),
        "https://google-proxy.example/token"
    );
    assert_eq!(
        youtube.refresh_url.as_str(),
        "https://google-proxy.example/token"
    );
    assert_eq!(
        youtube.default_scopes,
        before.get("youtube").unwrap().default_scopes
    );

    // Profile fields are overridden one by one.
    let discord = after.get("discord").unwrap().profile.as_ref().unwrap();
    assert_eq!(discord.email, ["/mail"]);
    assert_eq!(discord.id, ["/id"]);
    assert_eq!(after.len(), before.len());
}

#[test]
fn user_file_adds_providers_and_can_alias_builtins() {
    let c = Catalog::builtin()
        .merge(
            RawCatalog::from_toml_str(
                r#"
                [providers.google-drive]
                alias = "google"
                display_name = "Google Drive"
                default_scopes = ["openid", "https://www.googleapis.com/auth/drive.file"]
                api_base_url = "https://www.googleapis.com/drive/v3"
                "#,
            )
            .unwrap(),
        )
        .unwrap();
    let drive = c.get("google-drive").unwrap();
    assert_eq!(drive.token_url, c.get("google").unwrap().token_url);
    assert_eq!(drive.display_name, "Google Drive");

    // A Catalog can be merged too.
    let extra = Catalog::from_toml_str(
        r#"
        [providers.acme]
        display_name = "Acme"
        authorization_url = "https://acme.example/authorize"
        token_url = "https://acme.example/token"
        "#,
    )
    .unwrap();
    let c = c.merge(extra).unwrap();
    let acme = c.get("acme").unwrap();
    assert_eq!(acme.token_auth_method, TokenAuthMethod::ClientSecretBasic);
    assert_eq!(acme.pkce, Pkce::Supported);
    assert_eq!(acme.refresh_buffer, DEFAULT_REFRESH_BUFFER);
    assert_eq!(acme.revocation_style, RevocationStyle::None);
    assert!(acme.refresh_tokens && !acme.refresh_token_rotates);
}

#[test]
fn empty_string_removes_an_inherited_url() {
    let c = Catalog::builtin()
        .merge_toml_str(
            r#"
            [providers.google-mail]
            revocation_url = ""
            revocation_style = "none"
            "#,
        )
        .unwrap();
    assert!(c.get("google-mail").unwrap().revocation_url.is_none());
    assert!(c.get("google").unwrap().revocation_url.is_some());
}

#[test]
fn unknown_alias_is_an_error_naming_the_key() {
    let text = r#"
        [providers.foo]
        alias = "nope"
        display_name = "Foo"
    "#;
    assert_eq!(
        err_text(Catalog::from_toml_str(text)),
        "provider `foo`: alias: unknown provider `nope`"
    );
    assert!(err_text(Catalog::builtin().merge_toml_str(text)).contains("provider `foo`"));
}

#[test]
fn alias_cycle_is_an_error_naming_the_key() {
    let text = r#"
        [providers.a]
        alias = "b"
        [providers.b]
        alias = "a"
    "#;
    assert_eq!(
        err_text(Catalog::from_toml_str(text)),
        "provider `a`: alias: cycle a -> b -> a"
    );
    let own = "[providers.selfish]\nalias = \"selfish\"\n";
    assert_eq!(
        err_text(Catalog::from_toml_str(own)),
        "provider `selfish`: alias: cycle selfish -> selfish"
    );
}

#[test]
fn http_url_in_builtin_is_rejected() {
    let text = r#"
        [providers.plain]
        display_name = "Plain"
        authorization_url = "https://plain.example/authorize"
        token_url = "http://plain.example/token"
    "#;
    let err = Catalog::parse(text, UrlPolicy::HttpsOnly)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("provider `plain`: token_url: "), "{err}");
    assert!(err.contains("must use https"), "{err}");
    // The same entry is fine in a user file.
    assert!(Catalog::from_toml_str(text).is_ok());
    // Other schemes never are.
    let ftp = text.replace("http://", "ftp://");
    assert!(err_text(Catalog::from_toml_str(&ftp)).contains("unsupported scheme `ftp`"));
}

#[test]
fn validation_errors_name_provider_and_field() {
    let base = "[providers.tidal]\ndisplay_name = \"TIDAL\"\nauthorization_url = \"https://login.tidal.com/authorize\"\n";
    assert_eq!(
        err_text(Catalog::from_toml_str(&format!(
            "{base}token_url = \"/v1/oauth2/token\"\n"
        ))),
        "provider `tidal`: token_url: relative URL without a base"
    );
    assert_eq!(
        err_text(Catalog::from_toml_str(base)),
        "provider `tidal`: token_url: missing"
    );
    let full = format!("{base}token_url = \"https://auth.tidal.com/v1/oauth2/token\"\n");
    let cases = [
        (
            "authorize_params = { client_id = \"x\" }",
            "authorize_params",
        ),
        ("refresh_params = { grant_type = \"x\" }", "refresh_params"),
        ("revocation_style = \"rfc7009\"", "revocation_url"),
        (
            "revocation_style = \"github_grant\"\nrevocation_url = \"https://x.example/r\"",
            "revocation_url",
        ),
        ("default_scopes = [\"a b\"]", "default_scopes"),
        ("iss_parameter_supported = true", "iss_parameter_supported"),
        ("token_response_path = \"data\"", "token_response_path"),
        ("default_expires_in_secs = 60", "refresh_buffer_secs"),
        (
            "refresh_tokens = false\nrefresh_token_rotates = true",
            "refresh_token_rotates",
        ),
        (
            "[providers.tidal.profile]\nemail = \"/email\"",
            "profile.id",
        ),
        // Written into the page as an SVG attribute: colours only.
        ("brand_color = \"red\"", "brand_color"),
        ("brand_color = \"#12345\"", "brand_color"),
        ("brand_color = \"#12345g\"", "brand_color"),
        ("brand_color = \"#123456\\\" onload=\\\"x\"", "brand_color"),
    ];
    for (extra, field) in cases {
        let err = err_text(Catalog::from_toml_str(&format!("{full}{extra}\n")));
        assert!(
            err.starts_with(&format!("provider `tidal`: {field}: ")),
            "{extra}: {err}"
        );
    }
    // Typos in field names are caught by the TOML layer.
    let err = err_text(Catalog::from_toml_str(&format!("{full}tokn_url = \"x\"\n")));
    assert!(err.contains("tokn_url"), "{err}");
    // Keys are restricted.
    let err = err_text(Catalog::from_toml_str(
        &full.replace("providers.tidal", "providers.Tidal"),
    ));
    assert!(err.starts_with("provider `Tidal`: key: "), "{err}");
}

#[test]
fn profile_mapping_uses_the_first_non_null_pointer() {
    let c = Catalog::builtin();
    let discord = c.get("discord").unwrap().profile.as_ref().unwrap();
    let p = discord
        .extract(&json!({"id": "80351110224678912", "username": "nelly", "global_name": null}));
    assert_eq!(p.id.as_deref(), Some("80351110224678912"));
    assert_eq!(p.display_name.as_deref(), Some("nelly"));
    assert_eq!(p.email, None);

    let github = c.get("github").unwrap().profile.as_ref().unwrap();
    let p = github
        .extract(&json!({"id": 583231, "login": "octocat", "name": "The Octocat", "email": null}));
    assert_eq!(p.id.as_deref(), Some("583231"));
    assert_eq!(p.display_name.as_deref(), Some("The Octocat"));

    let tidal = c.get("tidal").unwrap().profile.as_ref().unwrap();
    let p = tidal.extract(&json!({"data": {"id": "42", "type": "users",
        "attributes": {"username": "dj", "email": "dj@example.com"}}}));
    assert_eq!(
        (p.id.as_deref(), p.email.as_deref()),
        (Some("42"), Some("dj@example.com"))
    );
}

#[test]
fn prompt_consent_for_offline_access_on_oidc_providers() {
    let mut spec = Catalog::builtin().get("spotify").unwrap().clone();
    let offline = scopes(&["openid", "offline_access"]);

    // Not an OIDC provider: untouched.
    assert!(!spec.authorize_params_for(&offline).contains_key("prompt"));

    spec.openid_connect = true;
    assert_eq!(spec.authorize_params_for(&offline)["prompt"], "consent");
    assert!(
        !spec
            .authorize_params_for(&scopes(&["openid"]))
            .contains_key("prompt")
    );

    for (existing, expected) in [
        ("consent", "consent"),
        ("login consent", "login consent"),
        ("login", "login consent"),
        ("none", "none"),
        ("", "consent"),
    ] {
        spec.authorize_params
            .insert("prompt".to_owned(), existing.to_owned());
        let params = spec.authorize_params_for(&offline);
        assert_eq!(params["prompt"], expected, "existing prompt `{existing}`");
        assert_eq!(params.len(), 1);
    }

    // Google keeps its own params and is not flagged.
    let google = Catalog::builtin().get("google").unwrap().clone();
    assert_eq!(
        google.authorize_params_for(&offline),
        google.authorize_params
    );
}

fn metadata(issuer: &str) -> serde_json::Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "device_authorization_endpoint": format!("{issuer}/device"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "scopes_supported": ["openid", "email", "profile", "offline_access"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
    })
}

async fn serve_metadata(server: &MockServer, well_known_path: &str, body: serde_json::Value) {
    Mock::given(method("GET"))
        .and(path(well_known_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

#[tokio::test]
async fn discovery_happy_path() {
    let server = MockServer::start().await;
    let issuer = format!("{}/realms/main", server.uri());
    serve_metadata(
        &server,
        "/realms/main/.well-known/openid-configuration",
        metadata(&issuer),
    )
    .await;

    let http = reqwest::Client::new();
    let spec = discover(&http, &Url::parse(&issuer).unwrap())
        .await
        .unwrap();
    assert_eq!(spec.key, "oidc");
    assert_eq!(spec.issuer.as_deref(), Some(issuer.as_str()));
    assert_eq!(
        spec.authorization_url.as_str(),
        format!("{issuer}/authorize")
    );
    assert_eq!(spec.token_url, spec.refresh_url);
    assert_eq!(spec.revocation_style, RevocationStyle::Rfc7009);
    assert_eq!(
        spec.revocation_url.unwrap().as_str(),
        format!("{issuer}/revoke")
    );
    assert_eq!(
        spec.device_authorization_url.unwrap().as_str(),
        format!("{issuer}/device")
    );
    assert_eq!(
        spec.userinfo_url.unwrap().as_str(),
        format!("{issuer}/userinfo")
    );
    assert!(spec.iss_parameter_supported);
    assert!(spec.openid_connect);
    assert_eq!(spec.token_auth_method, TokenAuthMethod::ClientSecretBasic);
    assert_eq!(spec.pkce, Pkce::Supported);
    assert!(spec.default_scopes.contains(&"offline_access".to_owned()));
    let profile = spec.profile.unwrap();
    assert_eq!(
        (profile.id[0].as_str(), profile.email[0].as_str()),
        ("/sub", "/email")
    );
    assert_eq!(profile.display_name[0], "/name");

    // Post-only servers get client_secret_post; no S256 means no PKCE.
    let server2 = MockServer::start().await;
    let mut meta = metadata(&server2.uri());
    meta["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
    meta["code_challenge_methods_supported"] = json!(["plain"]);
    serve_metadata(&server2, "/.well-known/openid-configuration", meta).await;
    let spec = discover(&http, &Url::parse(&server2.uri()).unwrap())
        .await
        .unwrap();
    assert_eq!(spec.token_auth_method, TokenAuthMethod::ClientSecretPost);
    assert!(!spec.public_client, "`none` is not offered");
    assert_eq!(spec.pkce, Pkce::Unsupported);

    // A server offering only public clients: `none`, and public clients
    // allowed; with a confidential method too, that one is preferred.
    for (offered, method) in [
        (json!(["none"]), TokenAuthMethod::None),
        (
            json!(["none", "client_secret_basic"]),
            TokenAuthMethod::ClientSecretBasic,
        ),
    ] {
        let server = MockServer::start().await;
        let mut meta = metadata(&server.uri());
        meta["token_endpoint_auth_methods_supported"] = offered;
        serve_metadata(&server, "/.well-known/openid-configuration", meta).await;
        let spec = discover(&http, &Url::parse(&server.uri()).unwrap())
            .await
            .unwrap();
        assert_eq!(spec.token_auth_method, method);
        assert!(spec.public_client);
    }
    // The bare-host issuer is kept verbatim (no trailing slash added).
    assert_eq!(spec.issuer.as_deref(), Some(server2.uri().as_str()));
}

#[tokio::test]
async fn discovery_rejects_issuer_mismatch() {
    let server = MockServer::start().await;
    serve_metadata(
        &server,
        "/.well-known/openid-configuration",
        metadata("https://evil.example"),
    )
    .await;
    let err = discover(&reqwest::Client::new(), &Url::parse(&server.uri()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::IssuerMismatch { .. }), "{err}");
    assert!(err.to_string().contains("https://evil.example"), "{err}");
}

#[tokio::test]
async fn discovery_rejects_bad_metadata() {
    let http = reqwest::Client::new();
    let server = MockServer::start().await;
    let mut meta = metadata(&server.uri());
    meta["token_endpoint_auth_methods_supported"] = json!(["private_key_jwt"]);
    serve_metadata(&server, "/.well-known/openid-configuration", meta).await;
    let err = discover(&http, &Url::parse(&server.uri()).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("none of client_secret_basic, client_secret_post, none"),
        "{err}"
    );

    // Non-loopback http issuers are refused before any request.
    let err = discover(&http, &Url::parse("http://idp.example").unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must use https"), "{err}");

    // 404 from the well-known URL.
    let empty = MockServer::start().await;
    let err = discover(&http, &Url::parse(&empty.uri()).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP 404"), "{err}");
}

#[tokio::test]
async fn catalog_discovers_pending_entries_with_user_overrides() {
    let server = MockServer::start().await;
    serve_metadata(
        &server,
        "/.well-known/openid-configuration",
        metadata(&server.uri()),
    )
    .await;

    let mut catalog = Catalog::builtin()
        .merge_toml_str(&format!(
            r#"
            [providers.oidc]
            issuer = "{uri}"

            [providers.corp]
            alias = "oidc"
            display_name = "Corp SSO"
            issuer = "{uri}"
            default_scopes = ["openid", "offline_access"]
            "#,
            uri = server.uri()
        ))
        .unwrap();
    assert!(catalog.get("oidc").is_none());
    assert_eq!(catalog.pending_discovery().count(), 2);

    let found = catalog
        .discover_pending(&reqwest::Client::new())
        .await
        .unwrap();
    assert_eq!(found, 2);
    assert_eq!(catalog.pending_discovery().count(), 0);

    let oidc = catalog.get("oidc").unwrap();
    assert_eq!(oidc.display_name, "OpenID Connect");
    assert_eq!(oidc.token_url.as_str(), format!("{}/token", server.uri()));
    let corp = catalog.get("corp").unwrap();
    assert_eq!(corp.display_name, "Corp SSO");
    assert_eq!(corp.alias_of.as_deref(), Some("oidc"));
    assert_eq!(corp.default_scopes, scopes(&["openid", "offline_access"]));
    assert_eq!(
        corp.authorize_params_for(&corp.default_scopes)["prompt"],
        "consent"
    );
    assert_eq!(
        corp.profile.as_ref().unwrap().display_name,
        ["/name", "/preferred_username"]
    );
}

#[test]
fn connection_param_declarations_are_checked_against_every_template() {
    let entry = |urls: &str, params: &str| {
        format!(
            "[providers.shop]\ndisplay_name = \"Shop\"\n{urls}\n[providers.shop.connection_params.shop]\ndescription = \"The shop\"\n{params}\n"
        )
    };
    let urls = "authorization_url = \"https://{shop}.myshopify.com/admin/oauth/authorize\"\ntoken_url = \"https://{shop}.myshopify.com/admin/oauth/access_token\"";
    let good = "pattern = \"[a-z0-9][a-z0-9-]{0,62}\"\nsource = \"session\"\nexample = \"acme\"";
    let catalog = Catalog::from_toml_str(&entry(urls, good)).unwrap();
    let spec = catalog.get("shop").unwrap();
    assert_eq!(spec.connection_params.len(), 1);
    assert_eq!(
        spec.connection_params[0].positions,
        vec![params::Position::Host]
    );

    let cases = [
        // A placeholder nobody declared.
        (
            "authorization_url = \"https://{store}.myshopify.com/a\"\ntoken_url = \"https://x.example/t\"",
            good,
            "authorization_url",
        ),
        // The token response is not known when the user is sent to authorize.
        (
            urls,
            "pattern = \"[a-z]+\"\nsource = \"token_response\"\npointer = \"/shop\"\nexample = \"acme\"",
            "authorization_url",
        ),
        // Nor the callback's query.
        (
            urls,
            "pattern = \"[a-z]+\"\nsource = \"callback\"\nexample = \"acme\"",
            "authorization_url",
        ),
        (
            urls,
            "source = \"session\"\nexample = \"acme\"",
            "connection_params.shop.pattern",
        ),
        (
            urls,
            "pattern = \"[a-z\"\nsource = \"session\"\nexample = \"acme\"",
            "connection_params.shop.pattern",
        ),
        (
            urls,
            "pattern = \"[a-z]+\"\nsource = \"session\"\nexample = \"ACME\"",
            "connection_params.shop.example",
        ),
        // A pattern that lets a value out of a host label is caught by
        // the example.
        (
            urls,
            "pattern = \".+\"\nsource = \"session\"\nexample = \"evil.com/x\"",
            "connection_params.shop.example",
        ),
        (
            urls,
            "pattern = \"[a-z]+\"\nexample = \"acme\"",
            "connection_params.shop.source",
        ),
        (
            urls,
            "pattern = \"[a-z]+\"\nsource = \"post_connect\"\npointer = \"/0/id\"\nexample = \"acme\"",
            "connection_params.shop.request",
        ),
        (
            urls,
            "pattern = \"[a-z]+\"\nsource = \"session\"\nquery = \"shop\"\nexample = \"acme\"",
            "connection_params.shop.query",
        ),
    ];
    for (urls, params, field) in cases {
        let err = err_text(Catalog::from_toml_str(&entry(urls, params)));
        assert!(
            err.starts_with(&format!("provider `shop`: {field}: ")),
            "{params}: {err}"
        );
    }
    // Only non-secret fields can be kept as metadata.
    let err = err_text(Catalog::from_toml_str(&format!(
        "[providers.slack]\ndisplay_name = \"Slack\"\n{urls}\ntoken_metadata = [\"/authed_user/access_token\"]\n"
    ).replace("{shop}", "acme")));
    assert!(
        err.starts_with("provider `slack`: token_metadata: "),
        "{err}"
    );
}
