//! Connections across users: the filtered, keyset-paged listing, the
//! summary an operator watches, and one connection's history.

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as CURSOR;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokenvault::domain::{ConnectionStatus, IntegrationKey, UserId};
use tokenvault::store::{
    HistoryCursor, HistoryEntry, HistoryKind, ListCursor, ListFilter, StatusCount,
};
use tokenvault::vault::ConnectionView;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::connections::key_of;
use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::flows::user_id;
use crate::http::error::ErrorCode;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Kept strings so bad values answer our own error codes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only connections in this status.
    #[param(value_type = Option<ConnectionStatus>)]
    pub(super) status: Option<String>,
    /// Only connections to this integration (configured or not).
    #[param(value_type = Option<String>, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub(super) integration: Option<String>,
    /// Only users whose id starts with this (user-id characters).
    #[param(value_type = Option<String>, pattern = "^[A-Za-z0-9._@:+=-]{1,128}$")]
    pub(super) user_id_prefix: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    pub(super) limit: Option<String>,
    /// The previous page's `next_cursor`.
    pub(super) after: Option<String>,
}

/// Kept strings so bad values answer our own error codes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    after: Option<String>,
}

/// A connection with whose it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListedConnection {
    /// The connection's id; a new one each time the user connects again.
    #[schema(format = Uuid)]
    pub id: String,
    pub user_id: UserId,
    #[serde(flatten)]
    pub connection: ConnectionView,
}

/// One page of connections, in (user id, integration) order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    pub connections: Vec<ListedConnection>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Connections per status.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct StatusCounts {
    pub connected: u64,
    pub needs_reauth: u64,
    pub expired: u64,
    pub error: u64,
    pub disconnected: u64,
}

impl StatusCounts {
    fn add(&mut self, status: ConnectionStatus, count: u64) {
        *match status {
            ConnectionStatus::Connected => &mut self.connected,
            ConnectionStatus::NeedsReauth => &mut self.needs_reauth,
            ConnectionStatus::Expired => &mut self.expired,
            ConnectionStatus::Error => &mut self.error,
            ConnectionStatus::Disconnected => &mut self.disconnected,
        } += count;
    }
}

/// Counts for one integration, or for all.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct SummaryCounts {
    pub total: u64,
    pub by_status: StatusCounts,
    /// Refreshable connections whose refresh is due within the hour.
    pub due_within_1h: u64,
    /// Connections in a streak of failed refreshes (still `connected`
    /// while the access token lasts, then `error`).
    pub failing: u64,
}

impl SummaryCounts {
    fn add(&mut self, row: &StatusCount) {
        self.total += row.count;
        self.by_status.add(row.status, row.count);
        self.due_within_1h += row.due;
        self.failing += row.failing;
    }
}

/// One integration's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationSummary {
    pub integration: IntegrationKey,
    #[serde(flatten)]
    pub counts: SummaryCounts,
}

/// Every connection counted, in all and per integration.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionSummary {
    #[serde(flatten)]
    pub totals: SummaryCounts,
    /// Integrations with at least one connection, by key.
    pub integrations: Vec<IntegrationSummary>,
}

/// Why a change was a failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventError {
    /// How the failure was classified: `transient`, `rate_limited`,
    /// `rejected`, … (null for a provider's refusal of the grant).
    pub class: Option<String>,
    /// The provider's error code (`invalid_grant`, `http_503`, …).
    pub code: Option<String>,
    pub message: Option<String>,
}

/// One entry of a connection's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionEvent {
    #[schema(format = Uuid)]
    pub id: String,
    /// The connection it happened to (a reconnect keeps its id).
    #[schema(format = Uuid)]
    pub connection_id: String,
    pub kind: HistoryKind,
    /// The connection's status after it.
    pub status: ConnectionStatus,
    pub error: Option<EventError>,
    pub at: DateTime<Utc>,
}

impl From<HistoryEntry> for ConnectionEvent {
    fn from(entry: HistoryEntry) -> Self {
        let failed = entry.error_code.is_some() || entry.error_class.is_some();
        Self {
            id: entry.id.to_string(),
            connection_id: entry.connection_id.to_string(),
            kind: entry.kind,
            status: entry.status,
            error: failed.then_some(EventError {
                class: entry.error_class,
                code: entry.error_code,
                message: entry.error_message,
            }),
            at: entry.at,
        }
    }
}

/// One page of a connection's history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionEventPage {
    pub events: Vec<ConnectionEvent>,
    /// Pass as `after` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /v1/connections`
#[utoipa::path(
    get,
    operation_id = "listConnections",
    path = "/v1/connections",
    tag = "connections",
    summary = "Connections across users, filtered and paged",
    description = "In (user id, integration) byte order, keyset paged: pass `next_cursor` as `after` until it is null. Pages stay consistent while connections change: a row is never listed twice, and one present throughout is listed once. Each filter is served by an index, so every page costs the same however deep.",
    params(ListQuery),
    responses(
        (status = 200, description = "One page", body = ConnectionPage),
        (status = 400, description = "`invalid_status`, `invalid_integration`, `invalid_user_id` (the prefix), `invalid_page` (`limit` outside 1–1000), `invalid_cursor`, `invalid_query`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn list_connections(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ConnectionPage>, ApiError> {
    let filter = ListFilter {
        status: query.status.as_deref().map(status).transpose()?,
        integration: query.integration.as_deref().map(key_of).transpose()?,
        user_id_prefix: query
            .user_id_prefix
            .as_deref()
            .map(|raw| user_id(raw).map(|prefix| prefix.as_str().to_owned()))
            .transpose()?,
    };
    let limit = limit(query.limit.as_deref())?;
    let after = query.after.as_deref().map(list_cursor).transpose()?;
    let rows = state
        .vault
        .database()
        .list(&filter, after.as_ref(), limit)
        .await
        .map_err(ApiError::internal)?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last())
        .flatten()
        .map(|last| encode_list_cursor(&ListCursor::of(last)));
    Ok(Json(ConnectionPage {
        connections: rows
            .iter()
            .map(|record| ListedConnection {
                id: record.id.to_string(),
                user_id: record.user_id.clone(),
                connection: ConnectionView::from(record),
            })
            .collect(),
        next_cursor,
    }))
}

/// `GET /v1/connections/summary`
#[utoipa::path(
    get,
    operation_id = "getConnectionSummary",
    path = "/v1/connections/summary",
    tag = "connections",
    summary = "Connection counts by integration and status",
    description = "Who needs re-auth, what is failing and what is due, counted in one pass over the table.",
    responses(
        (status = 200, description = "The counts", body = ConnectionSummary),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn summary(State(state): State<AppState>) -> Result<Json<ConnectionSummary>, ApiError> {
    let due_before = state.vault.clock().now() + chrono::Duration::hours(1);
    let rows = state
        .vault
        .database()
        .summary(due_before)
        .await
        .map_err(ApiError::internal)?;
    let mut totals = SummaryCounts::default();
    let mut integrations: Vec<IntegrationSummary> = Vec::new();
    // Rows come ordered by integration.
    for row in &rows {
        totals.add(row);
        match integrations.last_mut() {
            Some(last) if last.integration == row.integration => last.counts.add(row),
            _ => {
                let mut counts = SummaryCounts::default();
                counts.add(row);
                integrations.push(IntegrationSummary {
                    integration: row.integration.clone(),
                    counts,
                });
            }
        }
    }
    Ok(Json(ConnectionSummary {
        totals,
        integrations,
    }))
}

/// `GET /v1/users/{user_id}/connections/{integration}/events`
#[utoipa::path(
    get,
    operation_id = "listConnectionEvents",
    path = "/v1/users/{user_id}/connections/{integration}/events",
    tag = "connections",
    summary = "What happened to the user's connection, newest first",
    description = "Kept whether or not a webhook is configured, across reconnects, for `history_retention_days` (default 90): created, reconnected, imported, refresh_forced, refresh_failed (the first failed run of a streak and the one that turns the connection to `error`, with the failure's class and code), recovered, needs_reauth, expired, revoked. Routine scheduled refreshes are not listed: `last_refreshed_at` on the connection says when the last one was. Entries outlive a revoked connection until retention removes them; a pair that never had a connection has an empty history.",
    params(
        ("user_id" = UserId, Path, description = "The application's id for its user"),
        ("integration" = IntegrationKey, Path, description = "An integration key (configured or not)"),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "One page, newest first", body = ConnectionEventPage),
        (status = 400, description = "`invalid_user_id`, `invalid_integration`, `invalid_page`, `invalid_cursor`, `invalid_query`, `invalid_path`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn events(
    State(state): State<AppState>,
    ApiPath((user, key)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<ConnectionEventPage>, ApiError> {
    let user = user_id(&user)?;
    let integration = key_of(&key)?;
    let limit = limit(query.limit.as_deref())?;
    let before = query.after.as_deref().map(history_cursor).transpose()?;
    let entries = state
        .vault
        .database()
        .history(&user, &integration, before.as_ref(), limit)
        .await
        .map_err(ApiError::internal)?;
    let next_cursor = (entries.len() == limit as usize)
        .then(|| entries.last())
        .flatten()
        .map(|last| encode_history_cursor(&last.cursor()));
    Ok(Json(ConnectionEventPage {
        events: entries.into_iter().map(ConnectionEvent::from).collect(),
        next_cursor,
    }))
}

fn status(raw: &str) -> Result<ConnectionStatus, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidStatus,
            format!(
                "status {raw:?} is not one of {}",
                ConnectionStatus::ALL
                    .map(ConnectionStatus::as_str)
                    .join(", ")
            ),
        )
    })
}

pub(super) fn limit(raw: Option<&str>) -> Result<u32, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_PAGE);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PAGE).contains(n))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidPage,
                format!("limit must be a whole number from 1 to {MAX_PAGE}, got {raw:?}"),
            )
        })
}

fn bad_cursor() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidCursor,
        "after must be the next_cursor of a previous page",
    )
}

/// The two halves of a cursor: `base64url(first/second)`. `/` appears in
/// neither user ids, integration keys, numbers nor UUIDs.
fn decode_cursor(raw: &str) -> Result<(String, String), ApiError> {
    let bytes = CURSOR.decode(raw).map_err(|_| bad_cursor())?;
    let text = String::from_utf8(bytes).map_err(|_| bad_cursor())?;
    let (first, second) = text.split_once('/').ok_or_else(bad_cursor)?;
    Ok((first.to_owned(), second.to_owned()))
}

fn encode_list_cursor(cursor: &ListCursor) -> String {
    CURSOR.encode(format!("{}/{}", cursor.user_id, cursor.integration))
}

fn list_cursor(raw: &str) -> Result<ListCursor, ApiError> {
    let (user, integration) = decode_cursor(raw)?;
    Ok(ListCursor {
        user_id: UserId::parse(user).map_err(|_| bad_cursor())?,
        integration: IntegrationKey::parse(integration).map_err(|_| bad_cursor())?,
    })
}

fn encode_history_cursor(cursor: &HistoryCursor) -> String {
    CURSOR.encode(format!("{}/{}", cursor.at.timestamp_millis(), cursor.id))
}

fn history_cursor(raw: &str) -> Result<HistoryCursor, ApiError> {
    let (at, id) = decode_cursor(raw)?;
    Ok(HistoryCursor {
        at: at
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(bad_cursor)?,
        id: uuid::Uuid::parse_str(&id).map_err(|_| bad_cursor())?,
    })
}
