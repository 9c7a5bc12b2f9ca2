//! The OpenAPI document: served openly, OpenAPI 3.1, built from the same
//! declarations as the router and the scope check (every documented
//! operation answers, with the scope it documents), and in step with the
//! README's API table.

use std::collections::BTreeSet;

use crate::common::*;
use serde_json::{Value, json};
use tokenvault::domain::IntegrationKey;
use tokenvault::integrations::IntegrationConfig;

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "head", "patch"];

type Operations = BTreeSet<(String, String)>;

fn spec() -> Value {
    serde_json::to_value(tokenvault_server::http::openapi::openapi()).unwrap()
}

/// (METHOD, path) of every operation in the document.
fn spec_operations(spec: &Value) -> Operations {
    spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// "missing on each side" for two sets of operations.
fn difference(left_name: &str, left: &Operations, right_name: &str, right: &Operations) -> String {
    format!(
        "in {left_name} but not in {right_name}: {:?}\nin {right_name} but not in {left_name}: {:?}",
        left.difference(right).collect::<Vec<_>>(),
        right.difference(left).collect::<Vec<_>>()
    )
}

/// The paths the router registers outside the declared API (by
/// `.route(` in its source): browser flows, probes and the document.
fn routes_outside_the_api() -> Vec<&'static str> {
    let mut paths = Vec::new();
    for (_, path) in routed_outside_the_api() {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths
}

/// (METHOD, path) of every route the router declares outside `http::api`
/// (in `http/mod.rs` and the console's `http/admin/mod.rs`), in order.
fn routed_outside_the_api() -> Vec<(String, &'static str)> {
    let mut routes = Vec::new();
    for source in [
        include_str!("../../src/http/mod.rs"),
        include_str!("../../src/http/admin/mod.rs"),
    ] {
        for (start, _) in source.match_indices(".route(") {
            let rest = &source[start..];
            let path = rest.split('"').nth(1).expect("a route path literal");
            // The call ends where the next chained call starts.
            let end = rest[1..].find("\n        .").map_or(rest.len(), |i| i + 1);
            let call = &rest[..end];
            for method in ["get", "post"] {
                if call.contains(&format!(" {method}("))
                    || call.contains(&format!("({method}("))
                    || call.contains(&format!(".{method}("))
                {
                    routes.push((method.to_uppercase(), path));
                }
            }
        }
    }
    routes
}

/// (METHOD, path) rows of README.md's API table; query strings dropped, a
/// row may name several paths.
fn readme_operations() -> Operations {
    let readme = include_str!("../../../../README.md");
    let mut operations = Operations::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let methods: Vec<&str> = cells
            .get(1)
            .map(|c| c.split(", ").collect())
            .unwrap_or_default();
        if cells.len() < 4
            || !methods
                .iter()
                .all(|m| METHODS.contains(&m.to_lowercase().as_str()))
        {
            continue;
        }
        let paths = cells[2].split('`').skip(1).step_by(2);
        for path in paths {
            let path = path.split('?').next().unwrap();
            for method in &methods {
                operations.insert(((*method).to_owned(), path.to_owned()));
            }
        }
    }
    operations
}

/// A built-in-free integration on loopback: nothing here calls the network.
async fn service_with_integration() -> Service {
    let providers = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        providers.path(),
        "[providers.loopback]\ndisplay_name = \"Loopback\"\n\
         authorization_url = \"http://127.0.0.1:9/authorize\"\n\
         token_url = \"http://127.0.0.1:9/token\"\n",
    )
    .unwrap();
    start_service(|config, base| {
        config.providers_file = Some(providers.path().to_path_buf());
        config.integrations.insert(
            IntegrationKey::parse("demo").unwrap(),
            IntegrationConfig {
                provider: "loopback".into(),
                client_id: "demo-client".into(),
                client_secret: Some("demo-secret".into()),
                redirect_uri: Some(url::Url::parse(&format!("{base}/oauth/callback")).unwrap()),
                ..Default::default()
            },
        );
    })
    .await
}

/// A concrete URL for a templated path.
fn fill(path: &str) -> String {
    path.replace("{user_id}", "user-1")
        .replace("{integration}", "demo")
        .replace("{key}", "demo")
        .replace("{id}", "0190a0b2-0000-7000-8000-000000000000")
        .replace("{path}", "me")
}

#[test]
fn every_operation_has_its_own_camel_case_operation_id() {
    let spec = spec();
    let mut seen = std::collections::HashMap::new();
    for (method, path) in spec_operations(&spec) {
        let id = spec["paths"][&path][method.to_lowercase()]["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"))
            .to_owned();
        assert!(
            id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{method} {path}: {id} is not camelCase"
        );
        if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
            panic!("{id} names both {other} and {method} {path}");
        }
    }
    assert_eq!(
        spec["paths"]["/v1/users/{user_id}/connections/{integration}/token"]["get"]["operationId"],
        "getToken"
    );
    assert_eq!(
        spec["paths"]["/v1/proxy/{integration}/{user_id}/{path}"]["post"]["operationId"],
        "proxyPost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_without_a_key_and_is_openapi_3_1() {
    let service = start_service(|_, _| {}).await;
    let response = service
        .http
        .get(service.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    // The instance's public URL is the document's server, so a generated
    // client has a base URL.
    assert_eq!(served["servers"], json!([{"url": service.base}]));
    let mut without_servers = served.clone();
    without_servers.as_object_mut().unwrap().remove("servers");
    assert_eq!(without_servers, spec(), "the served document is openapi()");

    assert!(
        served["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        served["openapi"]
    );
    assert_eq!(served["info"]["title"], "tokenvault");
    assert_eq!(served["info"]["version"], env!("CARGO_PKG_VERSION"));
    let scheme = &served["components"]["securitySchemes"]["api_key"];
    assert_eq!(
        (&scheme["type"], &scheme["scheme"], &scheme["bearerFormat"]),
        (&json!("http"), &json!("bearer"), &json!("tvk_…"))
    );
    assert_eq!(
        served["components"]["schemas"]["ErrorBody"]["required"],
        json!(["error", "message", "request_id"])
    );
    for (method, path) in spec_operations(&served) {
        let operation = &served["paths"][&path][method.to_lowercase()];
        assert_eq!(
            operation["security"],
            json!([{"api_key": []}]),
            "{method} {path}"
        );
        let responses = operation["responses"].as_object().unwrap();
        assert_eq!(
            responses["401"]["$ref"], "#/components/responses/Unauthorized",
            "{method} {path}"
        );
        // Every error status documents the one error envelope.
        for (status, response) in responses {
            // Shared responses (401, 403, 413, layer 503s) are checked below.
            if status.starts_with(['4', '5']) && response.get("$ref").is_none() {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
}

#[test]
fn shared_error_responses_use_the_error_envelope() {
    let spec = spec();
    let shared = spec["components"]["responses"].as_object().unwrap();
    for name in [
        "Unauthorized",
        "Forbidden",
        "PayloadTooLarge",
        "ServiceUnavailable",
    ] {
        assert_eq!(
            shared[name]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{name}"
        );
    }
}

/// The scope an operation's description names.
fn documented_scope(operation: &Value) -> tokenvault::api_keys::Scope {
    let description = operation["description"].as_str().unwrap_or_default();
    let named = description
        .split("Needs an API key with the `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no scope in {description:?}"));
    named.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operation_enforces_the_scope_it_documents() {
    use tokenvault::api_keys::{self, Scope, SqlApiKeyStore};
    let spec = spec();
    let service = service_with_integration().await;
    let database = tokenvault::store::Database::open(
        &service.config.database_url(),
        &tokenvault::store::PoolOptions::default(),
    )
    .await
    .unwrap();
    let store = SqlApiKeyStore::on(&database);
    let mut keys = Vec::new();
    for scope in Scope::ALL {
        let key = api_keys::generate("scope-test", scope, chrono::Utc::now()).unwrap();
        store.insert(&key).await.unwrap();
        keys.push((
            scope,
            secrecy::ExposeSecret::expose_secret(&key.key).to_owned(),
        ));
    }
    let mut needs = std::collections::BTreeMap::new();
    for (method, path) in spec_operations(&spec) {
        let operation = &spec["paths"][&path][method.to_lowercase()];
        let required = documented_scope(operation);
        needs.insert(format!("{method} {path}"), required.as_str());
        for (scope, key) in &keys {
            let response = service
                .http
                .request(method.parse().unwrap(), service.url(&fill(&path)))
                .bearer_auth(key)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let refused = status == 403 && body["error"] == "forbidden";
            assert_eq!(
                refused,
                !scope.allows(required),
                "{method} {path} with a {scope} key (documented: {required}) answered {status} {body}"
            );
        }
    }
    // The split the README documents.
    assert_eq!(
        needs["GET /v1/users/{user_id}/connections/{integration}/token"],
        "read-tokens"
    );
    assert_eq!(needs["POST /v1/connect-sessions"], "manage");
    assert_eq!(
        needs["DELETE /v1/users/{user_id}/connections/{integration}"],
        "manage"
    );
    assert_eq!(
        needs["PUT /v1/users/{user_id}/connections/{integration}"],
        "admin"
    );
    assert_eq!(needs["POST /v1/integrations/{key}/reset"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_is_documented_and_every_documented_operation_is_routed() {
    let spec = spec();
    let documented = spec_operations(&spec);
    assert!(documented.iter().all(|(_, path)| path.starts_with("/v1/")));
    // `/v1` routes exist only as declared in `http::api`, which the
    // document is built from; the router adds nothing else under `/v1`.
    let outside = routes_outside_the_api();
    assert_eq!(
        outside,
        [
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/connect/{id}",
            "/connect/{id}/start",
            "/connect/{id}/result",
            "/connect.js",
            "/ui/popup.js",
            "/ui/device.js",
            "/ui/connect.css",
            "/ui/theme.css",
            "/device/{id}",
            "/device/{id}/status",
            "/oauth/callback",
            "/oauth/{integration}/callback",
            "/admin",
            "/admin/login",
            "/admin/logout",
            "/admin/integrations/{key}/reset",
            "/admin/connections",
            "/admin/connections/{id}",
            "/admin/connections/{id}/refresh",
            "/admin/connections/{id}/revoke",
            "/admin/connections/{id}/reconnect-link",
            "/admin/bulk",
            "/admin/bulk/{id}",
            "/admin/bulk/{id}/live",
            "/admin/bulk/{id}/cancel",
            "/admin/keys",
            "/admin/keys/{id}/revoke",
            "/ui/admin.css",
            "/ui/admin.js"
        ]
    );

    // The router really answers each documented operation (the fallback's
    // `not_found` or 405 would mean it does not), and nothing else on
    // those paths.
    let service = service_with_integration().await;
    let paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let url = service.url(&fill(path));
            let response = service
                .http
                .request(method.parse().unwrap(), &url)
                .bearer_auth(API_KEY)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let unrouted = status == 405 || (status == 404 && body["error"] == "not_found");
            let is_documented = documented.contains(&(method.to_owned(), path.clone()));
            assert_eq!(
                !unrouted, is_documented,
                "{method} {url} answered {status} {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_min_ttl_bounds_in_the_document_are_the_handlers() {
    let spec = spec();
    let parameter =
        spec["paths"]["/v1/users/{user_id}/connections/{integration}/token"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "min_ttl")
            .unwrap()
            .clone();
    assert_eq!(parameter["in"], "query");
    assert_eq!(parameter["required"], false);
    let max = parameter["schema"]["maximum"].as_u64().unwrap();
    assert_eq!(parameter["schema"]["minimum"], 0);
    assert_eq!(parameter["schema"]["default"], 60);

    let service = service_with_integration().await;
    let token = |ttl: String| {
        let service = &service;
        async move {
            let response = service
                .get_json(&format!(
                    "/v1/users/user-1/connections/demo/token?min_ttl={ttl}"
                ))
                .await;
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap()["error"].clone(),
            )
        }
    };
    assert_eq!(
        token(max.to_string()).await,
        (404, json!("connection_not_found"))
    );
    assert_eq!(
        token("0".into()).await,
        (404, json!("connection_not_found"))
    );
    assert_eq!(
        token((max + 1).to_string()).await,
        (400, json!("invalid_min_ttl"))
    );
    assert_eq!(token("-1".into()).await, (400, json!("invalid_min_ttl")));
}

#[test]
fn the_readme_api_table_lists_exactly_the_documented_operations() {
    let readme = readme_operations();
    let readme_v1: Operations = readme
        .iter()
        .filter(|(_, path)| path.starts_with("/v1"))
        .cloned()
        .collect();
    let documented = spec_operations(&spec());
    assert_eq!(
        readme_v1,
        documented,
        "README.md's API table and the OpenAPI document differ\n{}",
        difference("README.md", &readme_v1, "the OpenAPI document", &documented)
    );

    // The routes outside /v1 are in the table too.
    let readme_rest: Operations = readme.difference(&readme_v1).cloned().collect();
    let routed_rest: Operations = routed_outside_the_api()
        .into_iter()
        .map(|(method, path)| (method, path.to_owned()))
        .collect();
    assert_eq!(
        readme_rest,
        routed_rest,
        "{}",
        difference("README.md", &readme_rest, "the router", &routed_rest)
    );
}

/// README.md's error table is [`ErrorCode::markdown_table`], row for row:
/// a code cannot be added, renamed or re-statused without the README
/// following. `UPDATE_README=1` rewrites the table in place.
#[test]
fn the_readme_error_table_is_generated_from_the_error_codes() {
    use tokenvault_server::http::error::ErrorCode;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let header = "| status | `error` | when |\n";
    let start = readme.find(header).expect("README has the error table");
    let end = readme[start..]
        .find("\n\n")
        .map_or(readme.len(), |at| start + at + 1);
    let expected = ErrorCode::markdown_table();
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{}{}{}", &readme[..start], expected, &readme[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        expected,
        "README.md's error table is stale: run `UPDATE_README=1 cargo test -p tokenvault-server --test it the_readme_error_table`"
    );
    // Every code is distinct and parses back.
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
    }
}
