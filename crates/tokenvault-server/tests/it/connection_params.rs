//! Connection parameters over HTTP: a connect session for a provider whose
//! URLs depend on the connection takes them as `connection_params`, checks
//! each against the entry, and the catalog API shows what an entry takes.

use crate::common::*;
use serde_json::{Value, json};
use tokenvault::domain::IntegrationKey;
use tokenvault::integrations::IntegrationConfig;

const PROVIDERS: &str = r#"
[providers.shopish]
display_name = "Shopify-style"
authorization_url = "https://{shop}.myshopify.com/admin/oauth/authorize"
token_url = "https://{shop}.myshopify.com/admin/oauth/access_token"
api_base_url = "https://{shop}.myshopify.com/admin/api/2025-01"
token_auth_method = "client_secret_post"
pkce = "unsupported"

[providers.shopish.connection_params.shop]
description = "The shop's myshopify.com subdomain"
pattern = "[a-z0-9][a-z0-9-]{0,62}"
source = "session"
example = "acme"
"#;

async fn service(providers: &tempfile::NamedTempFile) -> Service {
    let path = providers.path().to_path_buf();
    start_service(move |config, base| {
        config.providers_file = Some(path);
        for (key, provider) in [("shop", "shopish"), ("gh", "github")] {
            config.integrations.insert(
                IntegrationKey::parse(key).unwrap(),
                IntegrationConfig {
                    provider: provider.into(),
                    client_id: "client".into(),
                    client_secret: Some(secrecy::SecretString::from("secret")),
                    redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                    ..Default::default()
                },
            );
        }
    })
    .await
}

#[tokio::test]
async fn connect_sessions_take_the_providers_connection_params_and_refuse_bad_ones() {
    let providers = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(providers.path(), PROVIDERS).unwrap();
    let service = service(&providers).await;

    let created = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "u1", "integration": "shop", "connection_params": {"shop": "acme"}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    let opened = browser(Some("https://acme.myshopify.com/".into()))
        .get(body["connect_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let to = url::Url::parse(&location(&opened)).unwrap();
    assert_eq!(to.host_str(), Some("acme.myshopify.com"));
    assert_eq!(to.path(), "/admin/oauth/authorize");

    let refused = [
        (json!({}), "`shop`"),
        (json!({"shop": "acme.evil.com"}), "`shop`"),
        (json!({"shop": "evil.com/x"}), "`shop`"),
        (json!({"shop": "acme:443"}), "`shop`"),
        (json!({"shop": "ACME"}), "`shop`"),
        (json!({"shop": "acme", "host": "evil.com"}), "`host`"),
    ];
    for (params, named) in refused {
        let response = service
            .post_json(
                "/v1/connect-sessions",
                json!({"user_id": "u2", "integration": "shop", "connection_params": params}),
            )
            .await;
        assert_eq!(response.status(), 400, "{params}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_connection_params", "{body}");
        assert!(body["message"].as_str().unwrap().contains(named), "{body}");
    }
    // A provider without parameters takes none.
    let response = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "u2", "integration": "gh", "connection_params": {"shop": "acme"}}),
        )
        .await;
    assert_eq!(response.status(), 400);
    // A picker cannot offer an integration that needs them.
    let response = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "u2", "integrations": ["gh", "shop"]}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_connection_params", "{body}");
    // Not a string: the JSON layer refuses it.
    let response = service
        .post_json(
            "/v1/connect-sessions",
            json!({"user_id": "u2", "integration": "shop", "connection_params": {"shop": 7}}),
        )
        .await;
    assert_eq!(response.status(), 400);

    let entry: Value = service
        .get_json("/v1/providers/shopish")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        entry["authorization_url"],
        "https://{shop}.myshopify.com/admin/oauth/authorize"
    );
    assert_eq!(
        entry["connection_params"],
        json!([{
            "name": "shop", "description": "The shop's myshopify.com subdomain",
            "source": "session", "pattern": "[a-z0-9][a-z0-9-]{0,62}", "example": "acme",
            "query": null, "pointer": null, "request": null, "extract_host": false
        }])
    );
    service.stop().await;
}
