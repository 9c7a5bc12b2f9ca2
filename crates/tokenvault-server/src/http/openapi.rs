//! The OpenAPI 3.1 document of `/v1`, served at `GET /openapi.json`.
//!
//! Each handler describes itself with `#[utoipa::path]`; what every `/v1`
//! operation shares (the API-key scheme, its `401`, the `x-request-id`
//! header) is added here once.

use std::sync::LazyLock;

use axum::Json;
use axum::http::Method;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Header, Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::ErrorBody;

const SECURITY_SCHEME: &str = "api_key";
const UNAUTHORIZED: &str = "Unauthorized";
const FORBIDDEN: &str = "Forbidden";
const TOO_LARGE: &str = "PayloadTooLarge";
const UNAVAILABLE: &str = "ServiceUnavailable";
/// What the router's own layers may answer with 503, on any operation.
const LAYER_503: &str = "`request_timeout` (the request ran longer than `request_timeout_secs`), `database_unavailable` (the database is unreachable: the API key could not be checked, or the operation needs the database; retry after `Retry-After`)";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenvault",
        version = env!("CARGO_PKG_VERSION"),
        description = "OAuth flows, encrypted token storage and single-flight refresh for an application's end users. Every `/v1` operation needs `Authorization: Bearer <api key>`; every error is `{\"error\", \"message\", \"request_id\"}` with a stable `error` code.",
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "meta", description = "The API itself"),
        (name = "integrations", description = "The provider catalog and the configured integrations"),
        (name = "connections", description = "A user's connections: tokens, refresh, status, revocation"),
        (name = "flows", description = "Connecting a user: browser and device flows"),
        (name = "proxy", description = "Calling the provider's API as the user, without handling tokens"),
        (name = "bulk", description = "One provider request for many users, run durably at a bounded rate"),
    ),
)]
pub struct ApiDoc;

/// The document (tests and tools use it; the server serves a cached copy):
/// the operations declared in [`super::api`], what every `/v1` operation
/// shares, and each operation's scope.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    for (_, group) in super::api() {
        document.merge(group.into_openapi());
    }
    V1Conventions.modify(&mut document);
    // OpenAPI has no catch-all segment: the proxy's `{*path}` (axum's
    // syntax, which the route is declared with) is documented as `{path}`.
    let paths = std::mem::take(&mut document.paths.paths);
    document.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    // One handler serves every proxied method; generators need one name
    // per operation: `proxyGet`, `proxyPost`, …
    for (path, item) in document.paths.paths.iter_mut() {
        if path.starts_with("/v1/proxy/") {
            for (method, operation) in operations(item) {
                let name = method.as_str();
                operation.operation_id = Some(format!(
                    "proxy{}{}",
                    &name[..1],
                    name[1..].to_ascii_lowercase()
                ));
                document_proxied_bodies(&method, operation);
            }
        }
    }
    document
}

/// The proxy relays bodies of any type both ways: typed as bytes, so that
/// a generated client can send a body and read the provider's answer.
fn document_proxied_bodies(method: &Method, operation: &mut Operation) {
    use utoipa::openapi::request_body::RequestBodyBuilder;
    use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
    let bytes = || {
        ContentBuilder::new()
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
            ))
            .build()
    };
    if matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        operation.request_body = Some(
            RequestBodyBuilder::new()
                .description(Some(
                    "Sent to the provider as is, with the request's Content-Type",
                ))
                .content("application/octet-stream", bytes())
                .build(),
        );
    }
    if *method != Method::HEAD
        && let Some(RefOr::T(ok)) = operation.responses.responses.get_mut("200")
    {
        ok.content
            .insert("application/octet-stream".into(), bytes());
    }
}

/// The document as served: with the instance's public URL as its server,
/// so a generated client has a base URL.
fn with_server(public_url: &url::Url) -> utoipa::openapi::OpenApi {
    let mut document = DOCUMENT.clone();
    document.servers = Some(vec![utoipa::openapi::Server::new(
        public_url.as_str().trim_end_matches('/'),
    )]);
    document
}

/// The methods a path item has operations for.
pub(super) fn methods_of(item: &PathItem) -> Vec<Method> {
    let mut item = item.clone();
    operations(&mut item).map(|(method, _)| method).collect()
}

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(openapi);

/// `GET /openapi.json` (no API key: it describes, it does not expose).
pub async fn serve(
    axum::extract::State(state): axum::extract::State<super::AppState>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(with_server(&state.settings.public_url))
}

/// Adds what the router's `/v1` layers do to every operation: the API-key
/// requirement and its `401`, and the `x-request-id` header every response
/// carries.
struct V1Conventions;

impl Modify for V1Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let request_id = || {
            let mut header = Header::new(ObjectBuilder::new().schema_type(Type::String));
            header.description = Some(
                "The request's id: the caller's `X-Request-Id` if sane, else a new UUID".into(),
            );
            header
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            SECURITY_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tvk_…")
                    .description(Some(
                        "A key from `tokenvault api-keys create` (or a bootstrap key in `TOKENVAULT_API_KEYS`, admin scope). Scopes nest: read-tokens ⊂ manage ⊂ admin; each operation names the one it needs.",
                    ))
                    .build(),
            ),
        );
        let error_response = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                            .build(),
                    )
                    .header("x-request-id", request_id())
                    .build(),
            )
        };
        for (name, description) in [
            (
                UNAUTHORIZED,
                "`unauthorized`: missing, unknown or revoked API key".to_owned(),
            ),
            (
                FORBIDDEN,
                "`forbidden`: the API key's scope does not cover this operation".to_owned(),
            ),
            (
                TOO_LARGE,
                "`payload_too_large`: the body is over `max_body_bytes`".to_owned(),
            ),
            (UNAVAILABLE, LAYER_503.to_owned()),
        ] {
            components
                .responses
                .insert(name.into(), error_response(&description));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let v1 = path.starts_with("/v1/");
            for (method, operation) in operations(item) {
                let responses = &mut operation.responses.responses;
                if operation.request_body.is_some() {
                    responses.insert("413".into(), RefOr::Ref(Ref::from_response_name(TOO_LARGE)));
                }
                match responses.get_mut("503") {
                    Some(RefOr::T(own)) => {
                        own.description = format!("{}; {LAYER_503}", own.description);
                    }
                    _ => {
                        responses.insert(
                            "503".into(),
                            RefOr::Ref(Ref::from_response_name(UNAVAILABLE)),
                        );
                    }
                }
                if v1 {
                    let scope = super::required_scope(&method, path);
                    responses.insert("403".into(), RefOr::Ref(Ref::from_response_name(FORBIDDEN)));
                    let note = format!("Needs an API key with the `{scope}` scope.");
                    operation.description = Some(match operation.description.take() {
                        Some(text) => format!("{text}\n\n{note}"),
                        None => note,
                    });
                }
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response.headers.insert("x-request-id".into(), request_id());
                    }
                }
                if v1 {
                    operation.security = Some(vec![SecurityRequirement::new(
                        SECURITY_SCHEME,
                        Vec::<String>::new(),
                    )]);
                    operation.responses.responses.insert(
                        "401".into(),
                        RefOr::Ref(Ref::from_response_name(UNAUTHORIZED)),
                    );
                }
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = (Method, &mut Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::OPTIONS, &mut item.options),
        (Method::HEAD, &mut item.head),
        (Method::PATCH, &mut item.patch),
        (Method::TRACE, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|op| (method, op)))
}
