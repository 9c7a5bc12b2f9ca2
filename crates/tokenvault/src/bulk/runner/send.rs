//! Sending one item's request and turning the answer (or the reason nothing
//! was sent) into the item's outcome.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;

use super::BulkWorker;
use super::pacer::Pacer;
use crate::bulk::{BulkActionRecord, BulkItem, ItemOutcome, ItemState, retry_delay};
use crate::domain::UserId;
use crate::proxy::{ApiRequest, RequestError, RequestOptions};
use crate::refresh::{TokenError, chrono};

impl BulkWorker {
    /// Sends one item's request and classifies the answer.
    pub(super) async fn send(
        &self,
        action: &BulkActionRecord,
        item: &BulkItem,
        request: ApiRequest,
        pacer: Arc<Pacer>,
    ) -> ItemOutcome {
        let vault = self.actions.vault();
        let Ok(user) = UserId::parse(&item.user_id) else {
            return final_outcome(
                ItemState::Failed,
                None,
                "invalid_user_id",
                "the stored user id is not valid",
            );
        };
        let options = RequestOptions {
            // A 429 goes back to the queue instead of holding a slot.
            max_retry_after: Duration::ZERO,
            gate: Some(pacer),
            ..RequestOptions::default()
        };
        let result = vault
            .request_with(&user, &action.integration, request, options)
            .await;
        let now = vault.clock().now();
        let outcome = match result {
            Ok(response) => {
                let status = response.status();
                let retry_after = response.retry_after();
                let secrets = response.secrets().clone();
                let body = if status.is_success() {
                    // Read to the end so the connection is reused.
                    let _ = response.bytes().await;
                    None
                } else {
                    // Providers echo what they were sent: the token goes
                    // before the excerpt is cut.
                    response
                        .bytes()
                        .await
                        .ok()
                        .map(|body| secrets.scrub_bytes(&body))
                };
                self.answered(item, status, retry_after, body.as_deref(), now)
            }
            Err(err) => self.not_sent(item, err, now),
        };
        metrics::counter!("tokenvault_bulk_items_total", "integration" => action.integration.to_string(), "outcome" => outcome.error_code.clone().unwrap_or_else(|| outcome.state.as_str().to_owned())).increment(1);
        outcome
    }

    fn answered(
        &self,
        item: &BulkItem,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> ItemOutcome {
        let code = Some(status.as_u16());
        let excerpt = body.map(excerpt).filter(|e| !e.is_empty());
        if status.is_success() {
            return ItemOutcome {
                state: ItemState::Succeeded,
                status_code: code,
                error_code: None,
                error_message: None,
                retry_at: None,
                rate_limited: false,
                failed_attempt: false,
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            if item.rate_limited + 1 >= self.settings.max_rate_limited {
                return ItemOutcome {
                    status_code: code,
                    rate_limited: true,
                    ..final_outcome(
                        ItemState::Failed,
                        code,
                        "rate_limited",
                        &format!("the provider answered 429 {} times", item.rate_limited + 1),
                    )
                };
            }
            let delay = retry_after
                .unwrap_or(self.settings.default_retry_after)
                .min(Duration::from_secs(3600));
            return ItemOutcome {
                state: ItemState::Pending,
                status_code: code,
                error_code: Some("rate_limited".into()),
                error_message: excerpt,
                retry_at: Some(now + chrono(delay)),
                rate_limited: true,
                failed_attempt: false,
            };
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return self.transient(item, code, "provider_error", excerpt, retry_after, now);
        }
        let error = if status == StatusCode::UNAUTHORIZED {
            "unauthorized"
        } else {
            "provider_error"
        };
        ItemOutcome {
            error_message: excerpt.or_else(|| Some(format!("the provider answered HTTP {status}"))),
            ..final_outcome(ItemState::Failed, code, error, "")
        }
    }

    fn not_sent(&self, item: &BulkItem, err: RequestError, now: DateTime<Utc>) -> ItemOutcome {
        match err {
            RequestError::Token(TokenError::NotConnected) => final_outcome(
                ItemState::Skipped,
                None,
                "not_connected",
                "the user has no connection to this integration",
            ),
            RequestError::Token(TokenError::NeedsReauth { status, .. }) => final_outcome(
                ItemState::Skipped,
                None,
                "needs_reauth",
                &format!("the connection is {status}; the user must connect again"),
            ),
            RequestError::Token(TokenError::ProviderUnavailable { cause, retry_after }) => self
                .transient(
                    item,
                    None,
                    "provider_unavailable",
                    Some(cause.to_string()),
                    retry_after,
                    now,
                ),
            RequestError::Token(TokenError::IntegrationMisconfigured { error }) => self.transient(
                item,
                None,
                "integration_misconfigured",
                Some(format!(
                    "the provider rejected the client credentials ({})",
                    error.code
                )),
                Some(Duration::from_secs(60)),
                now,
            ),
            RequestError::Token(TokenError::Vault(err)) => {
                self.transient(item, None, "internal", Some(err.to_string()), None, now)
            }
            RequestError::Network(reason) => {
                self.transient(item, None, "provider_unreachable", Some(reason), None, now)
            }
            other => final_outcome(
                ItemState::Failed,
                None,
                "invalid_request",
                &other.to_string(),
            ),
        }
    }

    /// A failure worth retrying: back to `pending` after a backoff (at
    /// least the provider's `Retry-After`), or `failed` after the last try.
    fn transient(
        &self,
        item: &BulkItem,
        status: Option<u16>,
        code: &str,
        message: Option<String>,
        retry_after: Option<Duration>,
        now: DateTime<Utc>,
    ) -> ItemOutcome {
        let failures = item.failures + 1;
        if failures >= self.settings.max_failures {
            return ItemOutcome {
                failed_attempt: true,
                error_message: message,
                ..final_outcome(ItemState::Failed, status, code, "")
            };
        }
        let delay = retry_delay(
            failures,
            self.settings.backoff_base,
            self.settings.backoff_cap,
        )
        .max(
            retry_after
                .unwrap_or_default()
                .min(Duration::from_secs(3600)),
        );
        ItemOutcome {
            state: ItemState::Pending,
            status_code: status,
            error_code: Some(code.to_owned()),
            error_message: message,
            retry_at: Some(now + chrono(delay)),
            rate_limited: false,
            failed_attempt: true,
        }
    }
}

fn final_outcome(state: ItemState, status: Option<u16>, code: &str, message: &str) -> ItemOutcome {
    ItemOutcome {
        state,
        status_code: status,
        error_code: Some(code.to_owned()),
        error_message: (!message.is_empty()).then(|| message.to_owned()),
        retry_at: None,
        rate_limited: false,
        failed_attempt: false,
    }
}

/// The start of a provider's error body, as one line of text.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}
