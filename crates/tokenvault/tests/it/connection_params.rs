//! Connection parameters end to end: Shopify-style (from the session),
//! Salesforce-style (from the token response) and QuickBooks-style (from
//! the callback) connections are made, refreshed and proxied against a mock
//! that checks the host and the path of every request; values trying to
//! escape the entry's URLs are refused before any request.
//!
//! The mock listens on 127.0.0.1; the HTTP client resolves the entries'
//! host names there (`OAuthClientConfig::resolve`), so the `Host` each
//! request carries is the one the filled template produced.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use tokenvault::connect::{Callback, ConnectError, ConnectFlow, Finished, NewSession};
use tokenvault::domain::{IntegrationKey, Scopes, UserId};
use tokenvault::integrations::{Integration, IntegrationConfig, Integrations};
use tokenvault::oauth::{OAuthClient, OAuthClientConfig};
use tokenvault::oauth_state::SqlStateStore;
use tokenvault::providers::{Catalog, ConnectionParams};
use tokenvault::proxy::{ApiPath, ApiRequest};
use tokenvault::store::PoolOptions;
use tokenvault::vault::Vault;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;

const HOSTS: &[&str] = &[
    "auth.atlassian.test",
    "api.atlassian.test",
    "acme.myshopify.test",
    "login.salesforce.test",
    "na1.my.salesforce.test",
    "appcenter.intuit.test",
    "oauth.platform.intuit.test",
    "quickbooks.api.intuit.test",
];

fn providers_toml(port: u16) -> String {
    format!(
        r#"
[providers.shopish]
display_name = "Shopify-style"
authorization_url = "http://{{shop}}.myshopify.test:{port}/admin/oauth/authorize"
token_url = "http://{{shop}}.myshopify.test:{port}/admin/oauth/access_token"
api_base_url = "http://{{shop}}.myshopify.test:{port}/admin/api/2025-01"
token_auth_method = "client_secret_post"
pkce = "unsupported"
refresh_token_rotates = true

[providers.shopish.connection_params.shop]
description = "The shop's myshopify.com subdomain"
pattern = "[a-z0-9][a-z0-9-]{{0,62}}"
source = "session"
example = "acme"

[providers.sfish]
display_name = "Salesforce-style"
authorization_url = "http://login.salesforce.test:{port}/services/oauth2/authorize"
token_url = "http://login.salesforce.test:{port}/services/oauth2/token"
api_base_url = "http://{{instance}}:{port}/services/data/v62.0"
token_metadata = ["/instance_url", "/id"]
pkce = "supported"

[providers.sfish.connection_params.instance]
description = "The org's My Domain host, from the token response's instance_url"
pattern = '[a-z0-9-]+\.my\.salesforce\.test'
source = "token_response"
pointer = "/instance_url"
extract = "host"
example = "https://acme.my.salesforce.test"

[providers.atlish]
display_name = "Atlassian-style"
authorization_url = "http://auth.atlassian.test:{port}/authorize"
token_url = "http://auth.atlassian.test:{port}/oauth/token"
api_base_url = "http://api.atlassian.test:{port}/ex/jira/{{cloud_id}}"
api_headers = {{ "X-Cloud" = "{{cloud_id}}", "X-Client" = "{{client_id}}" }}

[providers.atlish.connection_params.cloud_id]
description = "The site, from the accessible resources"
pattern = "[0-9a-f-]{{36}}"
source = "post_connect"
request = "http://api.atlassian.test:{port}/oauth/token/accessible-resources"
pointer = "/0/id"
example = "11223344-a1b2-3b33-c444-def123456789"

[providers.qbish]
display_name = "QuickBooks-style"
authorization_url = "http://appcenter.intuit.test:{port}/connect/oauth2"
token_url = "http://oauth.platform.intuit.test:{port}/oauth2/v1/tokens/bearer"
api_base_url = "http://quickbooks.api.intuit.test:{port}/v3/company/{{realm_id}}"
refresh_token_rotates = true

[providers.qbish.connection_params.realm_id]
description = "The QuickBooks company id"
pattern = "[0-9]{{1,20}}"
source = "callback"
query = "realmId"
example = "9130"
"#
    )
}

struct Setup {
    server: MockServer,
    port: u16,
    vault: Vault,
    flow: ConnectFlow,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let server = MockServer::start().await;
    let port = server.address().port();
    let catalog = Catalog::builtin()
        .merge_toml_str(&providers_toml(port))
        .unwrap();
    let oauth = OAuthClient::new(OAuthClientConfig {
        resolve: HOSTS
            .iter()
            .map(|h| ((*h).to_owned(), SocketAddr::from(([127, 0, 0, 1], 0))))
            .collect(),
        ..OAuthClientConfig::default()
    })
    .unwrap();
    let registry = Integrations::default();
    for key in ["shopish", "sfish", "qbish", "atlish"] {
        let config = IntegrationConfig {
            provider: key.into(),
            client_id: "client-id".into(),
            client_secret: Some(SecretString::from("client-secret")),
            redirect_uri: Some(
                url::Url::parse("https://vault.example.com/oauth/callback").unwrap(),
            ),
            ..IntegrationConfig::default()
        };
        registry.insert(
            Integration::new(
                integration(key),
                &config,
                catalog.get(key).unwrap().clone(),
                oauth.clone(),
            )
            .unwrap(),
        );
    }
    let (store, dir) = sqlite_store().await;
    let url = tokenvault::testing::sqlite_url(dir.path());
    let states = SqlStateStore::connect(&url, &PoolOptions::default())
        .await
        .unwrap();
    let vault = Vault::builder(Arc::new(store), envelope(&key_spec("k1", 7)))
        .integrations(Arc::new(registry))
        .build();
    let flow = ConnectFlow::new(vault.clone(), Arc::new(states), Duration::from_secs(600));
    Setup {
        server,
        port,
        vault,
        flow,
        _dir: dir,
    }
}

fn session(key: &str, user: &str, params: &[(&str, &str)]) -> NewSession {
    NewSession {
        user_id: UserId::parse(user).unwrap(),
        integration: IntegrationKey::parse(key).unwrap(),
        offered: Vec::new(),
        show_page: false,
        reconnect: false,
        scopes: Scopes::default(),
        redirect_to: None,
        provider_params: BTreeMap::new(),
        connection_params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        confirm: false,
    }
}

/// Creates a session, opens it, and comes back through the callback with
/// `query` added; returns the authorization URL and how the flow ended.
async fn connect(
    setup: &Setup,
    new: NewSession,
    query: &[(&str, &str)],
) -> Result<(url::Url, String), ConnectError> {
    let session = setup.flow.create_session(new).await?;
    let started = setup.flow.start(session.id.as_str(), None, None).await?;
    let (record, integration) = setup.flow.take_state(started.state.as_str(), None).await?;
    let callback = Callback {
        code: Some("the-code".into()),
        state: Some(started.state.as_str().to_owned()),
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Callback::default()
    };
    match setup.flow.finish(&integration, &record, &callback).await? {
        Finished::Connected { connection_id } => Ok((started.authorize_url, connection_id)),
        Finished::AwaitingConfirmation { .. } => panic!("not in confirm mode"),
    }
}

fn token(access: &str, refresh: &str) -> serde_json::Value {
    json!({"access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": 3600})
}

async fn stored_params(setup: &Setup, key: &str, user: &str) -> Option<ConnectionParams> {
    let record = setup
        .vault
        .store()
        .get(&UserId::parse(user).unwrap(), &integration(key))
        .await
        .unwrap()?;
    Some(ConnectionParams::from_metadata(&record.metadata))
}

async fn proxied_get(setup: &Setup, key: &str, user: &str, api_path: &str) -> u16 {
    setup
        .vault
        .request(
            &UserId::parse(user).unwrap(),
            &integration(key),
            ApiRequest::new(reqwest::Method::GET, ApiPath::parse(api_path).unwrap()),
        )
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_shopify_style_connection_uses_its_shop_for_every_request() {
    let setup = setup().await;
    let host = format!("acme.myshopify.test:{}", setup.port);
    Mock::given(method("POST"))
        .and(path("/admin/oauth/access_token"))
        .and(header("host", host.as_str()))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token("at-1", "rt-1")))
        .expect(1)
        .mount(&setup.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/admin/oauth/access_token"))
        .and(header("host", host.as_str()))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=rt-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token("at-2", "rt-2")))
        .expect(1)
        .mount(&setup.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/admin/api/2025-01/shop.json"))
        .and(header("host", host.as_str()))
        .and(header("authorization", "Bearer at-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"shop": {"id": 1}})))
        .expect(1)
        .mount(&setup.server)
        .await;

    let (authorize_url, _) = connect(&setup, session("shopish", "u1", &[("shop", "acme")]), &[])
        .await
        .unwrap();
    assert_eq!(authorize_url.host_str(), Some("acme.myshopify.test"));
    assert_eq!(authorize_url.path(), "/admin/oauth/authorize");
    assert_eq!(
        stored_params(&setup, "shopish", "u1")
            .await
            .unwrap()
            .get("shop"),
        Some("acme")
    );
    setup
        .vault
        .force_refresh(&UserId::parse("u1").unwrap(), &integration("shopish"))
        .await
        .unwrap();
    assert_eq!(proxied_get(&setup, "shopish", "u1", "shop.json").await, 200);
}

#[tokio::test]
async fn a_salesforce_style_connection_takes_its_instance_from_the_token_response() {
    let setup = setup().await;
    let login = format!("login.salesforce.test:{}", setup.port);
    let instance = format!("na1.my.salesforce.test:{}", setup.port);
    let mut exchange = token("sf-at-1", "sf-rt-1");
    exchange["instance_url"] = json!("https://na1.my.salesforce.test");
    exchange["id"] = json!("https://login.salesforce.test/id/00D/005");
    exchange["signature"] = json!("sig");
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .and(header("host", login.as_str()))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(exchange))
        .expect(1)
        .mount(&setup.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .and(header("host", login.as_str()))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "sf-at-2", "token_type": "Bearer", "expires_in": 3600,
            "instance_url": "https://na1.my.salesforce.test"
        })))
        .expect(1)
        .mount(&setup.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/sobjects/Account"))
        .and(header("host", instance.as_str()))
        .and(header("authorization", "Bearer sf-at-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"objectDescribe": {}})))
        .expect(1)
        .mount(&setup.server)
        .await;

    connect(&setup, session("sfish", "u1", &[]), &[])
        .await
        .unwrap();
    let record = setup
        .vault
        .store()
        .get(&UserId::parse("u1").unwrap(), &integration("sfish"))
        .await
        .unwrap()
        .unwrap();
    // token_metadata keeps what the entry lists, and only that.
    assert_eq!(
        record.metadata,
        json!({
            "instance_url": "https://na1.my.salesforce.test",
            "id": "https://login.salesforce.test/id/00D/005",
            "connection_params": {"instance": "na1.my.salesforce.test"}
        })
    );
    setup
        .vault
        .force_refresh(&UserId::parse("u1").unwrap(), &integration("sfish"))
        .await
        .unwrap();
    assert_eq!(
        proxied_get(&setup, "sfish", "u1", "sobjects/Account").await,
        200
    );
}

#[tokio::test]
async fn a_quickbooks_style_connection_takes_its_realm_from_the_callback() {
    let setup = setup().await;
    let oauth_host = format!("oauth.platform.intuit.test:{}", setup.port);
    let api_host = format!("quickbooks.api.intuit.test:{}", setup.port);
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/tokens/bearer"))
        .and(header("host", oauth_host.as_str()))
        .and(body_string_contains("grant_type=authorization_code"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token("qb-at-1", "qb-rt-1")))
        .expect(1)
        .mount(&setup.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/tokens/bearer"))
        .and(header("host", oauth_host.as_str()))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token("qb-at-2", "qb-rt-2")))
        .expect(1)
        .mount(&setup.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v3/company/9130/companyinfo/9130"))
        .and(header("host", api_host.as_str()))
        .and(header("authorization", "Bearer qb-at-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"CompanyInfo": {}})))
        .expect(1)
        .mount(&setup.server)
        .await;

    let (authorize_url, _) = connect(&setup, session("qbish", "u1", &[]), &[("realmId", "9130")])
        .await
        .unwrap();
    assert_eq!(authorize_url.host_str(), Some("appcenter.intuit.test"));
    assert_eq!(
        stored_params(&setup, "qbish", "u1")
            .await
            .unwrap()
            .get("realm_id"),
        Some("9130")
    );
    setup
        .vault
        .force_refresh(&UserId::parse("u1").unwrap(), &integration("qbish"))
        .await
        .unwrap();
    assert_eq!(
        proxied_get(&setup, "qbish", "u1", "companyinfo/9130").await,
        200
    );
}

/// Hostile values, from each source: every one refused, nothing stored,
/// and no request reaches anything but the token endpoint of a flow whose
/// token response carried the hostile value.
#[tokio::test]
async fn values_that_try_to_escape_the_entrys_urls_are_refused_before_any_request() {
    let setup = setup().await;

    // From the session (the shop is a host label).
    let shops = [
        "acme.evil.com",
        "evil.com#",
        "acme/../../x",
        "acme:8443",
        "user@evil.com",
        "ACME",
        "acme%2eevil",
        "127.0.0.1",
        "acme\\evil",
        "acme?x=1",
        " acme",
        "acme\n",
        "аcme", // Cyrillic а
        "",
        &"a".repeat(64),
    ];
    for (i, shop) in shops.iter().enumerate() {
        let err = connect(
            &setup,
            session("shopish", &format!("s{i}"), &[("shop", shop)]),
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ConnectError::SessionParams(_)),
            "{shop:?}: {err:?}"
        );
        assert!(err.to_string().contains("`shop`"), "{err}");
    }
    // Unknown and missing parameters are refused the same way.
    for params in [vec![], vec![("shop", "acme"), ("host", "evil.com")]] {
        let err = connect(&setup, session("shopish", "s-x", &params), &[])
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::SessionParams(_)), "{err:?}");
    }
    // A parameter the provider brings cannot be set by the application.
    let err = connect(
        &setup,
        session("sfish", "s-y", &[("instance", "na1.my.salesforce.test")]),
        &[],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectError::SessionParams(_)), "{err:?}");

    // From the callback (the realm is a path segment): refused before the
    // code is exchanged.
    for (i, realm) in ["..", "9130/../../admin", "9130%2F..", "9130?x", "-1", ""]
        .iter()
        .enumerate()
    {
        let err = connect(
            &setup,
            session("qbish", &format!("q{i}"), &[]),
            &[("realmId", realm)],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ConnectError::ProviderParams(_)),
            "{realm:?}: {err:?}"
        );
    }
    let err = connect(&setup, session("qbish", "q-missing", &[]), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::ProviderParams(_)), "{err:?}");
    assert!(
        setup.server.received_requests().await.unwrap().is_empty(),
        "no request for a refused session or callback value"
    );

    // From the token response (the instance is a whole host).
    let instances = [
        "https://evil.com",
        "https://na1.my.salesforce.test.evil.com",
        "https://na1.my.salesforce.test@evil.com",
        "https://evil.com/na1.my.salesforce.test",
        "http://na1.my.salesforce.test",
        "https://na1.my.salesforce.test:8443",
        "https://127.0.0.1",
        "https://[::1]",
        "na1.my.salesforce.test",
        "https://na1.my.salesforce.test/services",
    ];
    for (i, instance) in instances.iter().enumerate() {
        let server_response = json!({
            "access_token": format!("hostile-{i}"), "token_type": "Bearer",
            "instance_url": instance
        });
        let mock = Mock::given(method("POST"))
            .and(path("/services/oauth2/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(server_response))
            .mount_as_scoped(&setup.server)
            .await;
        let user = format!("f{i}");
        let err = connect(&setup, session("sfish", &user, &[]), &[])
            .await
            .unwrap_err();
        drop(mock);
        assert!(
            matches!(err, ConnectError::ProviderParams(_)),
            "{instance}: {err:?}"
        );
        assert!(
            stored_params(&setup, "sfish", &user).await.is_none(),
            "{instance}: stored"
        );
    }
    let requests = setup.server.received_requests().await.unwrap();
    assert_eq!(requests.len(), instances.len());
    assert!(
        requests
            .iter()
            .all(|r| r.url.path() == "/services/oauth2/token"),
        "only the token endpoint was called: {:?}",
        requests.iter().map(|r| r.url.path()).collect::<Vec<_>>()
    );
}

/// A stored connection whose parameters no longer pass the entry (stored
/// before the entry declared them, or tampered with) is refused before any
/// request: its refresh asks for a reconnect, its proxy calls fail.
#[tokio::test]
async fn a_connection_with_unusable_stored_params_sends_nothing() {
    let setup = setup().await;
    let envelope = envelope(&key_spec("k1", 7));
    let mut new = new_connection(&envelope, "u1", "shopish", "at", Some("rt"), None).await;
    new.metadata = json!({"connection_params": {"shop": "evil.com/x"}});
    setup.vault.store().upsert(new).await.unwrap();
    let err = setup
        .vault
        .force_refresh(&UserId::parse("u1").unwrap(), &integration("shopish"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs_reauth"), "{err}");
    let record = setup
        .vault
        .store()
        .get(&UserId::parse("u1").unwrap(), &integration("shopish"))
        .await
        .unwrap()
        .unwrap();
    let last_error = record.last_error.expect("the reason is kept");
    assert!(last_error.message.contains("`shop`"), "{last_error:?}");
    let proxied = setup
        .vault
        .request(
            &UserId::parse("u1").unwrap(),
            &integration("shopish"),
            ApiRequest::new(reqwest::Method::GET, ApiPath::parse("shop.json").unwrap()),
        )
        .await;
    assert!(proxied.is_err());
    assert!(setup.server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_atlassian_style_connection_reads_its_site_after_the_exchange() {
    let setup = setup().await;
    let auth = format!("auth.atlassian.test:{}", setup.port);
    let api = format!("api.atlassian.test:{}", setup.port);
    let cloud = "11223344-a1b2-3b33-c444-def123456789";
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("host", auth.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(token("at-1", "rt-1")))
        .expect(2) // this flow and the hostile one below
        .mount(&setup.server)
        .await;
    // One read after the exchange, with the new token; the entry's headers
    // that name the site are not sent before it is known.
    Mock::given(method("GET"))
        .and(path("/oauth/token/accessible-resources"))
        .and(header("host", api.as_str()))
        .and(header("authorization", "Bearer at-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": cloud, "name": "acme", "url": "https://acme.atlassian.net", "scopes": []}
        ])))
        .expect(1)
        .mount(&setup.server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/ex/jira/{cloud}/rest/api/3/myself")))
        .and(header("host", api.as_str()))
        .and(header("authorization", "Bearer at-1"))
        .and(header("x-cloud", cloud))
        .and(header("x-client", "client-id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"accountId": "1"})))
        .expect(1)
        .mount(&setup.server)
        .await;

    connect(&setup, session("atlish", "u1", &[]), &[])
        .await
        .unwrap();
    assert_eq!(
        stored_params(&setup, "atlish", "u1")
            .await
            .unwrap()
            .get("cloud_id"),
        Some(cloud)
    );
    assert_eq!(
        proxied_get(&setup, "atlish", "u1", "rest/api/3/myself").await,
        200
    );
    let requests = setup.server.received_requests().await.unwrap();
    let resources = requests
        .iter()
        .find(|r| r.url.path() == "/oauth/token/accessible-resources")
        .unwrap();
    assert!(!resources.headers.contains_key("x-cloud"));

    // A site id that fails the pattern stores nothing.
    Mock::given(method("GET"))
        .and(path("/oauth/token/accessible-resources"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "../../admin"}])))
        .with_priority(1)
        .mount(&setup.server)
        .await;
    let err = connect(&setup, session("atlish", "u2", &[]), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::ProviderParams(_)), "{err:?}");
    assert!(stored_params(&setup, "atlish", "u2").await.is_none());
}
