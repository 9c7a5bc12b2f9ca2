//! The console's pages and forms. Views only: the numbers come from the
//! `/v1` handlers (called as functions) and the library.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use askama::Template;
use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use tokenvault::api_keys::{self, Scope};
use tokenvault::bulk::{BulkActionView, ItemState};
use tokenvault::connect::NewSession;
use tokenvault::domain::{ConnectionId, ConnectionStatus, Scopes};
use tokenvault::store::{ConnectionRecord, HistoryKind};

use super::session::{self, Form, Operator};
use super::{ClientAddress, ConsoleError, not_found};
use crate::http::error::{ApiError, ApiPath, ApiQuery, ErrorCode};
use crate::http::{AppState, auth, bulk, connections, integrations, listing};

const STATUSES: [ConnectionStatus; 5] = [
    ConnectionStatus::Connected,
    ConnectionStatus::NeedsReauth,
    ConnectionStatus::Expired,
    ConnectionStatus::Error,
    ConnectionStatus::Disconnected,
];

/// What every signed-in page shows around its content.
struct Chrome {
    section: &'static str,
    csrf: String,
    key_id: String,
}

impl Chrome {
    fn new(section: &'static str, operator: &Operator) -> Self {
        Self {
            section,
            csrf: operator.session.csrf_token.clone(),
            key_id: operator.caller.key_id.clone(),
        }
    }
}

fn render(template: &impl Template, status: StatusCode) -> Response {
    match template.render() {
        Ok(page) => (status, Html(page)).into_response(),
        Err(err) => ConsoleError(ApiError::internal(err)).into_response(),
    }
}

/// `2026-12-05 14:03 UTC`, or `—`.
fn when(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "—".to_owned(),
        |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// `in 12 min`, `3 h ago`: next to a time where the distance matters.
fn relative(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(at) = at else {
        return String::new();
    };
    let secs = (at - now).num_seconds();
    let (amount, future) = (secs.unsigned_abs(), secs >= 0);
    let span = match amount {
        0..60 => format!("{amount} s"),
        60..3600 => format!("{} min", amount / 60),
        3600..172_800 => format!("{} h", amount / 3600),
        _ => format!("{} days", amount / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A fixed confirmation picked by the `done` query parameter (never text
/// from the request itself).
fn flash(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "refreshed" => "The connection was refreshed.",
        "revoked" => "The connection was revoked and its tokens erased.",
        "reset" => "The integration was reset: its circuit is closed.",
        "cancelled" => "The bulk action was cancelled; items already sent stay sent.",
        "key_revoked" => "The API key was revoked. Its console sessions end within 5 seconds.",
        _ => return None,
    })
}

/// The page's `done` query parameter, read leniently: a malformed or
/// repeated one shows no message instead of an error.
pub struct Done {
    done: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Done {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            done: query_value(parts, "done"),
        })
    }
}

/// The first value of `name` in the request's query.
fn query_value(parts: &Parts, name: &str) -> Option<String> {
    url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

// ---------------------------------------------------------------- sign-in

/// Where sign-in attempts come from.
pub struct ClientAddr(std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ClientAddress>().map_or(
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            |address| address.0,
        )))
    }
}

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    notice: Option<&'static str>,
    error: Option<String>,
}

/// `GET /admin/login`
pub async fn login(parts: Parts) -> Response {
    let notice = match query_value(&parts, "why").as_deref() {
        Some("expired") => Some("Your session has ended. Sign in again."),
        Some("revoked") => {
            Some("The API key of your session was revoked. Sign in with a valid admin key.")
        }
        Some("signed_out") => Some("You are signed out."),
        _ => None,
    };
    render(
        &LoginPage {
            notice,
            error: None,
        },
        StatusCode::OK,
    )
}

/// `POST /admin/login`: an admin-scope API key for a session cookie.
pub async fn do_login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    form: Form,
) -> Result<Response, ConsoleError> {
    if let Err(wait) = state.console.attempt_login(address) {
        tracing::warn!(%address, "admin console sign-in attempts over the limit");
        let mut err = ApiError::new(
            ErrorCode::TooManyLoginAttempts,
            format!("too many sign-in attempts from your address; try again in {wait} s"),
        );
        err.retry_after = Some(wait);
        return Err(ConsoleError(err));
    }
    let presented = form.get("api_key").unwrap_or_default().trim();
    let refuse = |status: StatusCode, message: &str| {
        render(
            &LoginPage {
                notice: None,
                error: Some(message.to_owned()),
            },
            status,
        )
    };
    if presented.is_empty() {
        return Ok(refuse(StatusCode::BAD_REQUEST, "Enter an admin API key."));
    }
    let digest = auth::digest(presented);
    match state.api_keys.verify_digest(digest).await {
        Ok(caller) if caller.scope.allows(Scope::Admin) => {
            let cookie = session::open(&state, &caller, &digest).await?;
            tracing::info!(key = %caller.key_id, "admin console session opened");
            let mut response = Redirect::to("/admin").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(Some(&cookie), state.console.secure_cookie),
            );
            Ok(response)
        }
        Ok(caller) => Ok(refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "This key has the {} scope; the console needs an admin key.",
                caller.scope.as_str()
            ),
        )),
        Err(auth::AuthError::Unavailable(err)) => Err(ConsoleError(ApiError::new(
            ErrorCode::DatabaseUnavailable,
            format!("cannot check the key: {err}"),
        ))),
        Err(_) => Ok(refuse(
            StatusCode::UNAUTHORIZED,
            "That key is not a valid API key (or it was revoked).",
        )),
    }
}

/// `POST /admin/logout`
pub async fn logout(
    State(state): State<AppState>,
    operator: Operator,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    state
        .console
        .sessions
        .delete(secrecy::ExposeSecret::expose_secret(&operator.cookie))
        .await
        .map_err(|err| ConsoleError(ApiError::internal(err)))?;
    let mut response = Redirect::to("/admin/login?why=signed_out").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::set_cookie(None, state.console.secure_cookie),
    );
    Ok(response)
}

// ---------------------------------------------------------------- overview

struct IntegrationRow {
    key: String,
    name: String,
    total: u64,
    by_status: Vec<(&'static str, u64)>,
    due: u64,
    failing: u64,
}

struct HealthRow {
    key: String,
    name: String,
    state: &'static str,
    circuit: String,
    problem: Option<String>,
    resettable: bool,
}

#[derive(Template)]
#[template(path = "admin/overview.html")]
struct OverviewPage {
    chrome: Chrome,
    flash: Option<&'static str>,
    statuses: Vec<&'static str>,
    totals: IntegrationRow,
    rows: Vec<IntegrationRow>,
    refreshed: u64,
    refresh_failures: u64,
    success_rate: String,
    events_1h: Vec<(&'static str, u64)>,
    backlog: u64,
    health: Vec<HealthRow>,
}

fn counts_row(key: String, name: String, counts: &listing::SummaryCounts) -> IntegrationRow {
    let by = &counts.by_status;
    IntegrationRow {
        key,
        name,
        total: counts.total,
        by_status: vec![
            ("connected", by.connected),
            ("needs_reauth", by.needs_reauth),
            ("expired", by.expired),
            ("error", by.error),
            ("disconnected", by.disconnected),
        ],
        due: counts.due_within_1h,
        failing: counts.failing,
    }
}

/// `GET /admin`
pub async fn overview(
    State(state): State<AppState>,
    operator: Operator,
    done: Done,
) -> Result<Response, ConsoleError> {
    let summary = listing::summary(State(state.clone())).await?.0;
    let configured = integrations::list_integrations(State(state.clone()))
        .await
        .0;
    let name_of = |key: &str| {
        configured
            .integrations
            .iter()
            .find(|i| i.key.as_str() == key)
            .map_or_else(
                || format!("{key} (not configured)"),
                |i| i.display_name.clone(),
            )
    };
    let rows = summary
        .integrations
        .iter()
        .map(|row| {
            counts_row(
                row.integration.to_string(),
                name_of(row.integration.as_str()),
                &row.counts,
            )
        })
        .collect();
    let database = state.vault.database();
    let since = state.vault.clock().now() - chrono::Duration::hours(1);
    let kinds = database
        .kinds_since(since)
        .await
        .map_err(ApiError::internal)?;
    let refreshed = database
        .refreshed_since(since)
        .await
        .map_err(ApiError::internal)?;
    let refresh_failures = kinds.get(&HistoryKind::RefreshFailed).copied().unwrap_or(0);
    let attempts = refreshed + refresh_failures;
    let success_rate = if attempts == 0 {
        "—".to_owned()
    } else {
        format!("{:.1} %", refreshed as f64 * 100.0 / attempts as f64)
    };
    let backlog = database
        .count_pending_events()
        .await
        .map_err(ApiError::internal)?;
    let health = configured
        .integrations
        .iter()
        .map(|integration| {
            let health = integration.health.as_ref();
            let misconfigured = health.and_then(|h| h.misconfigured.as_ref());
            let throttled = health.and_then(|h| h.rate_limited_until);
            let mut circuit = health.map_or("closed", |h| h.circuit).to_owned();
            if let Some(secrets) = &integration.client_secrets {
                circuit.push_str(&format!(
                    " · client secret {} of {} in use",
                    secrets.in_use, secrets.configured
                ));
            }
            let problem = if let Some(unavailable) = &integration.unavailable {
                Some(format!(
                    "Unavailable since {}: {}",
                    when(Some(unavailable.since)),
                    unavailable.error
                ))
            } else if let Some(m) = misconfigured {
                Some(format!(
                    "Misconfigured since {}: the provider said {} ({})",
                    when(Some(m.since)),
                    m.error.code,
                    m.error.message
                ))
            } else {
                throttled.map(|until| format!("Rate-limited until {}", when(Some(until))))
            };
            let circuit_closed = health.is_none_or(|h| h.circuit == "closed");
            let state = if integration.unavailable.is_some() || misconfigured.is_some() {
                "error"
            } else if !circuit_closed || throttled.is_some() {
                "warn"
            } else {
                "ok"
            };
            HealthRow {
                key: integration.key.to_string(),
                name: integration.display_name.clone(),
                resettable: misconfigured.is_some() || !circuit_closed,
                state,
                circuit,
                problem,
            }
        })
        .collect();
    let page = OverviewPage {
        chrome: Chrome::new("overview", &operator),
        flash: flash(done.done.as_deref()),
        statuses: STATUSES.iter().map(|s| s.as_str()).collect(),
        totals: counts_row(String::new(), "All integrations".into(), &summary.totals),
        rows,
        refreshed,
        refresh_failures,
        success_rate,
        events_1h: kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| (kind.as_str(), *n))
            .collect(),
        backlog,
        health,
    };
    Ok(render(&page, StatusCode::OK))
}

/// `POST /admin/integrations/{key}/reset`
pub async fn reset_integration(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(key): ApiPath<String>,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    let _health = connections::reset_integration(State(state), ApiPath(key)).await?;
    Ok(Redirect::to("/admin?done=reset").into_response())
}

// ---------------------------------------------------------------- connections

struct ConnectionRow {
    id: String,
    user_id: String,
    integration: String,
    status: &'static str,
    expires: String,
    next_refresh: String,
    last_error: String,
}

#[derive(Template)]
#[template(path = "admin/connections.html")]
struct ConnectionsPage {
    chrome: Chrome,
    user: String,
    status: String,
    integration: String,
    statuses: Vec<&'static str>,
    integrations: Vec<String>,
    rows: Vec<ConnectionRow>,
    next: Option<String>,
    error: Option<String>,
}

#[derive(serde::Deserialize, Default)]
pub struct ConnectionFilter {
    #[serde(default)]
    user: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    integration: String,
    after: Option<String>,
}

/// `GET /admin/connections`: search by user-id prefix, filter by status
/// and integration, keyset-paged (the `/v1/connections` listing).
pub async fn connections(
    State(state): State<AppState>,
    operator: Operator,
    filter: Result<Query<ConnectionFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ConsoleError> {
    let Query(filter) = filter
        .map_err(|err| ConsoleError(ApiError::new(ErrorCode::InvalidQuery, err.body_text())))?;
    let now = state.vault.clock().now();
    let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let query = listing::ListQuery {
        status: non_empty(&filter.status),
        integration: non_empty(&filter.integration),
        user_id_prefix: non_empty(&filter.user),
        limit: Some("50".into()),
        after: filter.after.clone(),
    };
    let mut integrations: BTreeSet<String> = state
        .integrations
        .all()
        .iter()
        .map(|integration| integration.key().to_string())
        .collect();
    if let Some(key) = non_empty(&filter.integration) {
        integrations.insert(key);
    }
    let (rows, next, error, status) =
        match listing::list_connections(State(state.clone()), ApiQuery(query)).await {
            Ok(Json(page)) => {
                let next = page.next_cursor.map(|cursor| {
                    let mut url = url::form_urlencoded::Serializer::new(String::new());
                    url.append_pair("user", filter.user.trim())
                        .append_pair("status", filter.status.trim())
                        .append_pair("integration", filter.integration.trim())
                        .append_pair("after", &cursor);
                    format!("/admin/connections?{}", url.finish())
                });
                let rows = page
                    .connections
                    .into_iter()
                    .map(|listed| ConnectionRow {
                        id: listed.id,
                        user_id: listed.user_id.to_string(),
                        integration: listed.connection.integration.to_string(),
                        status: listed.connection.status.as_str(),
                        expires: relative(listed.connection.expires_at, now),
                        next_refresh: relative(listed.connection.next_refresh_at, now),
                        last_error: listed
                            .connection
                            .last_error
                            .map(|e| e.code)
                            .unwrap_or_default(),
                    })
                    .collect();
                (rows, next, None, StatusCode::OK)
            }
            // A bad filter is shown beside the form, not as a dead end.
            Err(err) if err.status == StatusCode::BAD_REQUEST => {
                (Vec::new(), None, Some(err.message), StatusCode::BAD_REQUEST)
            }
            Err(err) => return Err(err.into()),
        };
    let page = ConnectionsPage {
        chrome: Chrome::new("connections", &operator),
        user: filter.user,
        status: filter.status,
        integration: filter.integration,
        statuses: STATUSES.iter().map(|s| s.as_str()).collect(),
        integrations: integrations.into_iter().collect(),
        rows,
        next,
        error,
    };
    Ok(render(&page, status))
}

struct EventRow {
    at: String,
    kind: &'static str,
    status: &'static str,
    error: String,
}

#[derive(Template)]
#[template(path = "admin/connection.html")]
struct ConnectionPage {
    chrome: Chrome,
    flash: Option<&'static str>,
    id: String,
    user_id: String,
    integration: String,
    integration_name: String,
    configured: bool,
    status: &'static str,
    scopes: Vec<String>,
    facts: Vec<(&'static str, String)>,
    last_error: Option<(String, String)>,
    metadata: Vec<(String, String)>,
    events: Vec<EventRow>,
    reconnect_link: Option<String>,
}

async fn find_connection(state: &AppState, raw: &str) -> Result<ConnectionRecord, ConsoleError> {
    let id = ConnectionId::parse(raw).map_err(|_| not_found("connection"))?;
    state
        .vault
        .database()
        .get_by_id(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| not_found("connection"))
}

/// The `/v1` path parameters that name the connection.
fn api_path(record: &ConnectionRecord) -> ApiPath<(String, String)> {
    ApiPath((record.user_id.to_string(), record.integration.to_string()))
}

/// Metadata as `key = value` lines; nested values as compact JSON.
fn metadata_lines(metadata: &serde_json::Value) -> Vec<(String, String)> {
    match metadata {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(key, value)| {
                let shown = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (key.clone(), shown)
            })
            .collect(),
        serde_json::Value::Null => Vec::new(),
        other => vec![(String::new(), other.to_string())],
    }
}

async fn connection_page(
    state: &AppState,
    operator: &Operator,
    record: &ConnectionRecord,
    flash: Option<&'static str>,
    reconnect_link: Option<String>,
) -> Result<Response, ConsoleError> {
    let now = state.vault.clock().now();
    let history = state
        .vault
        .database()
        .history(&record.user_id, &record.integration, None, 50)
        .await
        .map_err(ApiError::internal)?;
    let configured = state.integrations.get(&record.integration);
    let page = ConnectionPage {
        chrome: Chrome::new("connections", operator),
        flash,
        id: record.id.to_string(),
        user_id: record.user_id.to_string(),
        integration: record.integration.to_string(),
        integration_name: configured.as_ref().map_or_else(
            || record.integration.to_string(),
            |i| i.spec().display_name.clone(),
        ),
        configured: configured.is_some(),
        status: record.status.as_str(),
        scopes: record.scopes.to_vec(),
        facts: vec![
            ("Connected", when(Some(record.created_at))),
            (
                "Access token expires",
                format!(
                    "{} {}",
                    when(record.expires_at),
                    relative(record.expires_at, now)
                ),
            ),
            (
                "Last refresh",
                format!(
                    "{} {}",
                    when(record.last_refreshed_at),
                    relative(record.last_refreshed_at, now)
                ),
            ),
            (
                "Next refresh",
                format!(
                    "{} {}",
                    when(record.next_refresh_at),
                    relative(record.next_refresh_at, now)
                ),
            ),
            (
                "Refresh token",
                if record.refresh_token.is_some() {
                    "stored (sealed)".into()
                } else {
                    "none".into()
                },
            ),
            ("Updated", when(Some(record.updated_at))),
        ],
        last_error: record
            .last_error
            .as_ref()
            .map(|e| (e.code.clone(), e.message.clone())),
        metadata: metadata_lines(&record.metadata),
        events: history
            .into_iter()
            .map(|entry| EventRow {
                at: when(Some(entry.at)),
                kind: entry.kind.as_str(),
                status: entry.status.as_str(),
                error: [entry.error_class, entry.error_code, entry.error_message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" · "),
            })
            .collect(),
        reconnect_link,
    };
    Ok(render(&page, StatusCode::OK))
}

/// `GET /admin/connections/{id}`
pub async fn connection(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    done: Done,
) -> Result<Response, ConsoleError> {
    let record = find_connection(&state, &id).await?;
    connection_page(
        &state,
        &operator,
        &record,
        flash(done.done.as_deref()),
        None,
    )
    .await
}

/// `POST /admin/connections/{id}/refresh`
pub async fn refresh_connection(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    let record = find_connection(&state, &id).await?;
    let _refreshed = connections::force_refresh(State(state.clone()), api_path(&record)).await?;
    Ok(Redirect::to(&format!("/admin/connections/{}?done=refreshed", record.id)).into_response())
}

#[derive(Template)]
#[template(path = "admin/confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    heading: String,
    sentence: String,
    action: String,
    button: &'static str,
    back: String,
}

/// `GET /admin/connections/{id}/revoke`: the confirmation.
pub async fn confirm_revoke(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let record = find_connection(&state, &id).await?;
    let page = ConfirmPage {
        chrome: Chrome::new("connections", &operator),
        heading: format!("Revoke {}'s {} connection?", record.user_id, record.integration),
        sentence: "tokenvault asks the provider to revoke the grant, erases the stored tokens and marks the connection disconnected. The user has to connect again to restore it.".into(),
        action: format!("/admin/connections/{}/revoke", record.id),
        button: "Revoke the connection",
        back: format!("/admin/connections/{}", record.id),
    };
    Ok(render(&page, StatusCode::OK))
}

/// `POST /admin/connections/{id}/revoke`
pub async fn revoke_connection(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    let record = find_connection(&state, &id).await?;
    let _revocation = connections::revoke(State(state.clone()), api_path(&record)).await?;
    tracing::info!(key = %operator.caller.key_id, connection = %record.id, "connection revoked from the console");
    Ok(Redirect::to(&format!("/admin/connections/{}?done=revoked", record.id)).into_response())
}

/// `POST /admin/connections/{id}/reconnect-link`: a connect session that
/// renews this connection, shown once to copy to the user.
pub async fn reconnect_link(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    let record = find_connection(&state, &id).await?;
    let session = state
        .connect
        .create_session(NewSession {
            user_id: record.user_id.clone(),
            integration: record.integration.clone(),
            offered: Vec::new(),
            show_page: true,
            reconnect: true,
            scopes: Scopes::default(),
            redirect_to: None,
            provider_params: BTreeMap::new(),
            connection_params: BTreeMap::new(),
            confirm: false,
        })
        .await
        .map_err(ApiError::from)?;
    let link = state
        .settings
        .public_url
        .join(&format!("connect/{}", session.id.as_str()))
        .map_err(ApiError::internal)?;
    tracing::info!(key = %operator.caller.key_id, connection = %record.id, "reconnect link created from the console");
    connection_page(&state, &operator, &record, None, Some(link.to_string())).await
}

// ---------------------------------------------------------------- bulk actions

struct BulkRow {
    id: String,
    integration: String,
    state: &'static str,
    total: u64,
    done: u64,
    failed: u64,
    created: String,
}

#[derive(Template)]
#[template(path = "admin/bulk_list.html")]
struct BulkListPage {
    chrome: Chrome,
    rows: Vec<BulkRow>,
}

fn finished_items(view: &BulkActionView) -> u64 {
    view.counts
        .iter()
        .filter(|(state, _)| state.is_final())
        .map(|(_, n)| n)
        .sum()
}

/// `GET /admin/bulk`: the newest 100 actions.
pub async fn bulk_actions(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<Response, ConsoleError> {
    let views = state.bulk.recent(100).await.map_err(bulk::bulk_error)?;
    let rows = views
        .iter()
        .map(|view| BulkRow {
            id: view.id.to_string(),
            integration: view.integration.to_string(),
            state: view.state,
            total: view.total,
            done: finished_items(view),
            failed: view.counts.get(&ItemState::Failed).copied().unwrap_or(0),
            created: when(Some(view.created_at)),
        })
        .collect();
    let page = BulkListPage {
        chrome: Chrome::new("bulk", &operator),
        rows,
    };
    Ok(render(&page, StatusCode::OK))
}

struct FailedItem {
    user_id: String,
    status: String,
    error: String,
}

#[derive(Template)]
#[template(path = "admin/bulk.html")]
struct BulkPage {
    chrome: Chrome,
    flash: Option<&'static str>,
    id: String,
    integration: String,
    state: &'static str,
    active: bool,
    total: u64,
    counts: Vec<(&'static str, u64)>,
    percent: u64,
    rate: String,
    current_rate: String,
    eta: String,
    request: String,
    facts: Vec<(&'static str, String)>,
    failed: Vec<FailedItem>,
}

fn eta(seconds: Option<u64>) -> String {
    match seconds {
        None => "—".into(),
        Some(s) if s < 60 => format!("{s} s"),
        Some(s) if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        Some(s) => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn percent(view: &BulkActionView) -> u64 {
    (finished_items(view) * 100)
        .checked_div(view.total)
        .unwrap_or(100)
}

/// `GET /admin/bulk/{id}`
pub async fn bulk_action(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<String>,
    done: Done,
) -> Result<Response, ConsoleError> {
    let id = bulk::action_id(&id).map_err(|_| not_found("bulk action"))?;
    let view = state.bulk.status(id).await.map_err(bulk::bulk_error)?;
    let failed = state
        .bulk
        .items(id, Some(ItemState::Failed), None, 100)
        .await
        .map_err(bulk::bulk_error)?;
    let page = BulkPage {
        chrome: Chrome::new("bulk", &operator),
        flash: flash(done.done.as_deref()),
        id: view.id.to_string(),
        integration: view.integration.to_string(),
        state: view.state,
        active: matches!(view.state, "scheduled" | "running"),
        total: view.total,
        counts: view.counts.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
        percent: percent(&view),
        rate: format!("{:.1}/s", view.rate_per_second),
        current_rate: format!("{:.1}/s", view.current_rate),
        eta: eta(view.eta_seconds),
        request: serde_json::to_string_pretty(&view.request).unwrap_or_default(),
        facts: vec![
            ("Created", when(Some(view.created_at))),
            ("Not before", when(Some(view.not_before))),
            ("Started", when(view.started_at)),
            ("Finished", when(view.finished_at)),
        ],
        failed: failed
            .into_iter()
            .map(|item| FailedItem {
                user_id: item.user_id,
                status: item.status_code.map(|s| s.to_string()).unwrap_or_default(),
                error: [item.error_code, item.error_message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": "),
            })
            .collect(),
    };
    Ok(render(&page, StatusCode::OK))
}

/// `GET /admin/bulk/{id}/live`: what the detail page's script refreshes.
pub async fn bulk_action_live(
    State(state): State<AppState>,
    _operator: Operator,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ConsoleError> {
    let id = bulk::action_id(&id).map_err(|_| not_found("bulk action"))?;
    let view = state.bulk.status(id).await.map_err(bulk::bulk_error)?;
    let counts: HashMap<&str, u64> = view.counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    Ok(Json(serde_json::json!({
        "state": view.state,
        "counts": counts,
        "percent": percent(&view),
        "current_rate": format!("{:.1}/s", view.current_rate),
        "eta": eta(view.eta_seconds),
    }))
    .into_response())
}

/// `POST /admin/bulk/{id}/cancel`
pub async fn cancel_bulk_action(
    State(state): State<AppState>,
    operator: Operator,
    ApiPath(id): ApiPath<String>,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    let id = bulk::action_id(&id).map_err(|_| not_found("bulk action"))?;
    state.bulk.cancel(id).await.map_err(bulk::bulk_error)?;
    tracing::info!(key = %operator.caller.key_id, action = %id, "bulk action cancelled from the console");
    Ok(Redirect::to(&format!("/admin/bulk/{id}?done=cancelled")).into_response())
}

// ---------------------------------------------------------------- keys

struct KeyRow {
    id: String,
    name: String,
    scope: &'static str,
    created: String,
    last_used: String,
    revoked: Option<String>,
}

struct MasterKeyRow {
    id: String,
    rows: u64,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "admin/keys.html")]
struct KeysPage {
    chrome: Chrome,
    flash: Option<&'static str>,
    created: Option<(String, String)>,
    error: Option<String>,
    keys: Vec<KeyRow>,
    master_keys: Vec<MasterKeyRow>,
    scopes: Vec<&'static str>,
}

async fn keys_page(
    state: &AppState,
    operator: &Operator,
    flash: Option<&'static str>,
    created: Option<(String, String)>,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, ConsoleError> {
    let keys = state
        .console
        .keys
        .list()
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|key| KeyRow {
            id: key.id,
            name: key.name,
            scope: key.scope.as_str(),
            created: when(Some(key.created_at)),
            last_used: when(key.last_used_at),
            revoked: key.revoked_at.map(|at| when(Some(at))),
        })
        .collect();
    let counts = state
        .vault
        .database()
        .count_by_key()
        .await
        .map_err(ApiError::internal)?;
    let mut ids: Vec<String> = state.console.master_keys.clone();
    ids.extend(
        counts
            .keys()
            .filter(|id| !ids.contains(id))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let master_keys = ids
        .into_iter()
        .enumerate()
        .map(|(position, id)| {
            let rows = counts.get(&id).copied().unwrap_or(0);
            let in_ring = state.console.master_keys.contains(&id);
            let state = match (position, in_ring) {
                (0, true) => "active",
                (_, true) if rows == 0 => "retirable",
                (_, true) => "needs rotation",
                (_, false) => "missing from the key ring",
            };
            MasterKeyRow { id, rows, state }
        })
        .collect();
    let page = KeysPage {
        chrome: Chrome::new("keys", operator),
        flash,
        created,
        error,
        keys,
        master_keys,
        scopes: Scope::ALL.iter().map(|s| s.as_str()).collect(),
    };
    Ok(render(&page, status))
}

/// `GET /admin/keys`
pub async fn keys(
    State(state): State<AppState>,
    operator: Operator,
    done: Done,
) -> Result<Response, ConsoleError> {
    keys_page(
        &state,
        &operator,
        flash(done.done.as_deref()),
        None,
        None,
        StatusCode::OK,
    )
    .await
}

/// `POST /admin/keys`: a new API key, shown once.
pub async fn create_key(
    State(state): State<AppState>,
    operator: Operator,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    let name = form.get("name").unwrap_or_default().trim();
    let scope = form.get("scope").unwrap_or_default().parse::<Scope>();
    let generated = match scope {
        Ok(scope) => {
            api_keys::generate(name, scope, state.vault.clock().now()).map_err(|e| e.to_string())
        }
        Err(err) => Err(err.to_string()),
    };
    let new = match generated {
        Ok(new) => new,
        Err(message) => {
            return keys_page(
                &state,
                &operator,
                None,
                None,
                Some(message),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    state
        .console
        .keys
        .insert(&new)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(key = %operator.caller.key_id, created = %new.record.id, scope = new.record.scope.as_str(), "API key created from the console");
    let shown = (
        new.record.name.clone(),
        secrecy::ExposeSecret::expose_secret(&new.key).to_owned(),
    );
    keys_page(
        &state,
        &operator,
        None,
        Some(shown),
        None,
        StatusCode::CREATED,
    )
    .await
}

/// `POST /admin/keys/{id}/revoke`
pub async fn revoke_key(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<String>,
    form: Form,
) -> Result<Response, ConsoleError> {
    form.check_csrf(&operator)?;
    match state
        .console
        .keys
        .revoke(&id, state.vault.clock().now())
        .await
    {
        Ok(_) => {}
        Err(api_keys::ApiKeyError::NotFound(_)) => return Err(not_found("API key")),
        Err(err) => return Err(ApiError::internal(err).into()),
    }
    // This instance stops trusting it at once; others within 5 s.
    state.api_keys.forget_all();
    tracing::info!(key = %operator.caller.key_id, revoked = %id, "API key revoked from the console");
    Ok(Redirect::to("/admin/keys?done=key_revoked").into_response())
}

// ---------------------------------------------------------------- assets

const STYLESHEET: &str = include_str!("../../../assets/admin.css");
const SCRIPT: &str = include_str!("../../../assets/admin.js");

/// `GET /ui/admin.css`
pub async fn stylesheet() -> Response {
    crate::http::pages::static_asset("text/css; charset=utf-8", STYLESHEET.to_owned())
}

/// `GET /ui/admin.js`: copy buttons and the bulk page's live counts.
pub async fn script() -> Response {
    crate::http::pages::static_asset("text/javascript; charset=utf-8", SCRIPT.to_owned())
}
