//! Bulk actions: one provider request per user, run durably by the workers.

use crate::http::error::ErrorCode;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokenvault::bulk::{BulkActionView, BulkError, BulkItem, BulkSpecInput, ItemState};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};

pub(super) fn bulk_error(err: BulkError) -> ApiError {
    match err {
        BulkError::Invalid { field, message } => {
            ApiError::new(ErrorCode::InvalidBulkAction, format!("{field}: {message}"))
        }
        BulkError::NotFound => {
            ApiError::new(ErrorCode::BulkActionNotFound, "no bulk action with this id")
        }
        BulkError::Finished(state) => ApiError::new(
            ErrorCode::BulkActionFinished,
            format!("the bulk action is already {state}"),
        ),
        BulkError::Store(err) => ApiError::internal(err),
    }
}

pub(super) fn action_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidBulkActionId,
            format!("{raw:?} is not a bulk action id (a UUID)"),
        )
    })
}

/// `POST /v1/bulk-actions`
#[utoipa::path(
    post,
    operation_id = "createBulkAction",
    path = "/v1/bulk-actions",
    tag = "bulk",
    summary = "Run one provider API request for many users",
    description = "Persists the action and one item per user (a list of ids, deduplicated, or every connection of the integration with a status at this moment), then answers 202. Workers send the requests from `not_before` on, at most `rate_per_second` in any second (default: the integration's `rate_limit_per_second`), refreshing tokens as needed. An item succeeds on a 2xx answer and is never sent again; a 429 waits for `Retry-After`; 5xx and network failures back off and retry (5 tries); other answers fail with the provider's status; users without a usable connection are skipped. `bulk_action.completed` is sent as a webhook when every item is done. Bodies larger than `max_body_bytes` get 413: select users by status for very large audiences.",
    request_body = BulkSpecInput,
    responses(
        (status = 202, description = "Accepted; follow it with GET /v1/bulk-actions/{id}", body = BulkActionView),
        (status = 400, description = "`invalid_bulk_action` (the message names the field), `invalid_json`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<BulkSpecInput>,
) -> Result<(StatusCode, Json<BulkActionView>), ApiError> {
    let spec = state.bulk.parse(&input).map_err(bulk_error)?;
    let view = state.bulk.create(spec, None).await.map_err(bulk_error)?;
    tracing::info!(action = %view.id, integration = %view.integration, total = view.total, "bulk action created");
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// `GET /v1/bulk-actions/{id}`
#[utoipa::path(
    get,
    operation_id = "getBulkAction",
    path = "/v1/bulk-actions/{id}",
    tag = "bulk",
    summary = "A bulk action's progress",
    description = "Counts of items by state, the configured and current rate, and an ETA.",
    params(("id" = String, Path, format = Uuid, description = "The bulk action's id")),
    responses(
        (status = 200, description = "The action", body = BulkActionView),
        (status = 400, description = "`invalid_bulk_action_id`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`bulk_action_not_found`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BulkActionView>, ApiError> {
    let id = action_id(&id)?;
    Ok(Json(state.bulk.status(id).await.map_err(bulk_error)?))
}

/// Kept strings so bad values answer our own error codes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemsQuery {
    /// Only items in this state.
    #[param(value_type = Option<ItemState>)]
    state: Option<String>,
    /// Items after this `seq` (the previous page's `next_after`).
    #[param(value_type = Option<i64>, minimum = 0)]
    after: Option<String>,
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
}

/// One item.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemBody {
    /// Position in the action; pages are in this order.
    pub seq: i64,
    pub user_id: String,
    pub state: ItemState,
    /// Requests sent for it (retries included).
    pub attempts: u32,
    /// The provider's HTTP status of the last answer.
    pub status: Option<u16>,
    /// Why it failed, was skipped, or is waiting to retry.
    pub error: Option<ItemError>,
    /// Sends whose instance stopped before their outcome was recorded.
    pub interrupted: u32,
    /// When a pending item is tried next.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    /// `provider_error`, `unauthorized`, `rate_limited`, `provider_unavailable`, `provider_unreachable`, `integration_misconfigured`, `not_connected`, `needs_reauth`, `interrupted`, `invalid_request`.
    pub code: String,
    pub message: Option<String>,
}

impl From<BulkItem> for ItemBody {
    fn from(item: BulkItem) -> Self {
        Self {
            seq: item.seq,
            user_id: item.user_id,
            state: item.state,
            attempts: item.attempts,
            status: item.status_code,
            error: item.error_code.map(|code| ItemError {
                code,
                message: item.error_message,
            }),
            interrupted: item.interrupted,
            next_attempt_at: (item.state == ItemState::Pending).then_some(item.next_attempt_at),
            updated_at: item.updated_at,
            finished_at: item.finished_at,
        }
    }
}

/// A page of items.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemPage {
    pub items: Vec<ItemBody>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// `GET /v1/bulk-actions/{id}/items`
#[utoipa::path(
    get,
    operation_id = "listBulkActionItems",
    path = "/v1/bulk-actions/{id}/items",
    tag = "bulk",
    summary = "A bulk action's items, per user, in pages",
    params(("id" = String, Path, format = Uuid, description = "The bulk action's id"), ItemsQuery),
    responses(
        (status = 200, description = "A page of items", body = ItemPage),
        (status = 400, description = "`invalid_bulk_action_id`, `invalid_item_state`, `invalid_page`, `invalid_query`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`bulk_action_not_found`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn items(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ItemsQuery>,
) -> Result<Json<ItemPage>, ApiError> {
    let id = action_id(&id)?;
    let item_state = query
        .state
        .as_deref()
        .map(|raw| {
            raw.parse::<ItemState>().map_err(|()| {
                ApiError::new(
                    ErrorCode::InvalidItemState,
                    format!("{raw:?} is not one of pending, running, succeeded, failed, skipped, cancelled"),
                )
            })
        })
        .transpose()?;
    let bad_page = |what: &str| ApiError::new(ErrorCode::InvalidPage, what.to_owned());
    let after = query
        .after
        .as_deref()
        .map(|raw| raw.parse::<i64>().ok().filter(|n| *n >= 0))
        .map(|parsed| parsed.ok_or_else(|| bad_page("after must be a whole number from 0")))
        .transpose()?;
    let limit = super::listing::limit(query.limit.as_deref())?;
    let items = state
        .bulk
        .items(id, item_state, after, limit)
        .await
        .map_err(bulk_error)?;
    let next_after = (items.len() == limit as usize)
        .then(|| items.last().map(|item| item.seq))
        .flatten();
    Ok(Json(ItemPage {
        items: items.into_iter().map(ItemBody::from).collect(),
        next_after,
    }))
}

/// `POST /v1/bulk-actions/{id}/cancel`
#[utoipa::path(
    post,
    operation_id = "cancelBulkAction",
    path = "/v1/bulk-actions/{id}/cancel",
    tag = "bulk",
    summary = "Cancel a bulk action",
    description = "Pending items become `cancelled` and are never sent; requests already at the provider finish and are recorded. Sends `bulk_action.completed` with state `cancelled`.",
    params(("id" = String, Path, format = Uuid, description = "The bulk action's id")),
    responses(
        (status = 200, description = "The cancelled action", body = BulkActionView),
        (status = 400, description = "`invalid_bulk_action_id`, `invalid_path`", body = ErrorBody),
        (status = 404, description = "`bulk_action_not_found`", body = ErrorBody),
        (status = 409, description = "`bulk_action_finished`: already completed or cancelled", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BulkActionView>, ApiError> {
    let id = action_id(&id)?;
    Ok(Json(state.bulk.cancel(id).await.map_err(bulk_error)?))
}
