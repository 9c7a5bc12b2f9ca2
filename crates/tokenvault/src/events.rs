//! Signed webhooks from a durable outbox.
//!
//! Events are written to the `webhook_outbox` table in the same transaction
//! as the change they describe, so a crash can never lose one or announce a
//! change that did not happen. A [`WebhookDeliverer`] (one per instance; they
//! share the table through leases) POSTs them with retries and exponential
//! backoff: delivery is at least once, receivers deduplicate on the event id.
//!
//! Every request carries `Tokenvault-Signature: t=<unix>,v1=<hex>` where
//! `hex` is HMAC-SHA256(secret, "<t>.<body>"); [`verify_signature`] checks
//! one.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;
use url::Url;

use crate::domain::Clock;
use crate::store::{EventOutbox, OutboxEvent, PendingEvent, StoreError};

pub const SIGNATURE_HEADER: &str = "Tokenvault-Signature";

/// What happened. The wire names (`connection.needs_reauth`) are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    ConnectionCreated,
    ConnectionReconnected,
    ConnectionRefreshed,
    ConnectionNeedsReauth,
    ConnectionError,
    ConnectionRecovered,
    ConnectionRevoked,
    IntegrationMisconfigured,
    BulkActionCompleted,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        Self::ConnectionCreated,
        Self::ConnectionReconnected,
        Self::ConnectionRefreshed,
        Self::ConnectionNeedsReauth,
        Self::ConnectionError,
        Self::ConnectionRecovered,
        Self::ConnectionRevoked,
        Self::IntegrationMisconfigured,
        Self::BulkActionCompleted,
    ];

    /// Sent unless the operator lists the events they want:
    /// everything but the chatty `connection.refreshed`.
    pub fn default_set() -> BTreeSet<EventType> {
        Self::ALL
            .into_iter()
            .filter(|t| *t != Self::ConnectionRefreshed)
            .collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionCreated => "connection.created",
            Self::ConnectionReconnected => "connection.reconnected",
            Self::ConnectionRefreshed => "connection.refreshed",
            Self::ConnectionNeedsReauth => "connection.needs_reauth",
            Self::ConnectionError => "connection.error",
            Self::ConnectionRecovered => "connection.recovered",
            Self::ConnectionRevoked => "connection.revoked",
            Self::IntegrationMisconfigured => "integration.misconfigured",
            Self::BulkActionCompleted => "bulk_action.completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown webhook event {0:?}; expected one of {list}", list = EventType::ALL.map(EventType::as_str).join(", "))]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim())
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// Which events to record. With no webhook configured nothing is recorded,
/// so the outbox does not grow without a consumer.
#[derive(Debug, Clone, Default)]
pub struct Events {
    enabled: Option<Arc<BTreeSet<EventType>>>,
}

impl Events {
    /// Records nothing.
    pub fn disabled() -> Self {
        Self { enabled: None }
    }

    pub fn enabled(types: BTreeSet<EventType>) -> Self {
        Self {
            enabled: Some(Arc::new(types)),
        }
    }

    pub fn wants(&self, event_type: EventType) -> bool {
        self.enabled
            .as_ref()
            .is_some_and(|types| types.contains(&event_type))
    }

    /// An outbox row for `event_type` with `data`, or `None` when that type
    /// is not recorded.
    pub fn event(
        &self,
        event_type: EventType,
        data: Value,
        now: DateTime<Utc>,
    ) -> Option<OutboxEvent> {
        if !self.wants(event_type) {
            return None;
        }
        let id = uuid::Uuid::now_v7();
        let payload = json!({
            "id": id,
            "type": event_type.as_str(),
            "created_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        });
        Some(OutboxEvent {
            id,
            event_type: event_type.as_str().to_owned(),
            payload: payload.to_string(),
            created_at: now,
        })
    }
}

/// `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature_header(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let signature = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(signature))
}

/// HMAC-SHA256 keyed by `secret` over `"<timestamp>.<body>"`, not yet finalized.
fn mac(secret: &SecretString, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed; expected t=<unix>,v1=<hex>")]
    Malformed,
    #[error("the signature timestamp is outside the tolerance")]
    Stale,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a `Tokenvault-Signature` header against the raw body, in constant
/// time, rejecting timestamps further than `tolerance` from `now` (replay).
pub fn verify_signature(
    secret: &SecretString,
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now.timestamp() - timestamp).unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    let mac = mac(secret, timestamp, body);
    // Accept any listed v1 (several appear while a secret is being rotated).
    if signatures
        .iter()
        .any(|signature| mac.clone().verify_slice(signature).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: Url,
    pub secret: SecretString,
    /// Events leased per round.
    pub batch: u32,
    /// Concurrent deliveries per round.
    pub concurrency: usize,
    pub request_timeout: Duration,
    /// Delay before the first retry; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts before an event is abandoned (kept in the table for
    /// inspection).
    pub max_attempts: u32,
    /// How often to look for due events when the last round found none.
    pub poll_interval: Duration,
    /// How long a claimed batch stays with this deliverer; outlives every
    /// request of the batch (twice the request timeout, plus 30 s).
    pub lease: Duration,
}

impl WebhookSettings {
    pub fn new(url: Url, secret: SecretString) -> Self {
        Self {
            url,
            secret,
            batch: 50,
            concurrency: 8,
            request_timeout: Duration::from_secs(10),
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3600),
            // 5 s doubling to 1 h, then hourly: about a day of retries.
            max_attempts: 30,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(50),
        }
    }

    /// Delay after the `attempt`-th failed attempt (1-based), with ±20 %
    /// jitter so a receiver outage does not end in a thundering herd.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        jitter(exp.min(self.max_backoff), 0.2)
    }
}

/// `delay` scaled by a random factor in [1 − spread, 1 + spread].
pub(crate) fn jitter(delay: Duration, spread: f64) -> Duration {
    let factor = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
    delay.mul_f64(factor.max(0.0))
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Retry { at: DateTime<Utc>, error: String },
    Abandoned { error: String },
}

/// Delivers outbox events. Cheap to clone.
#[derive(Clone)]
pub struct WebhookDeliverer {
    outbox: Arc<dyn EventOutbox>,
    http: reqwest::Client,
    settings: Arc<WebhookSettings>,
    clock: Arc<dyn Clock>,
    owner: Arc<str>,
}

impl WebhookDeliverer {
    pub fn new(
        outbox: Arc<dyn EventOutbox>,
        settings: WebhookSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.request_timeout)
            .user_agent(concat!("tokenvault/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            outbox,
            http,
            settings: Arc::new(settings),
            clock,
            owner: format!("webhooks-{}", uuid::Uuid::new_v4()).into(),
        })
    }

    /// Claims events under `owner` (default: a random `webhooks-<uuid>`);
    /// the service uses its instance id, so every lease it holds is findable.
    pub fn with_owner(mut self, owner: impl Into<std::sync::Arc<str>>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Leases and delivers one batch of due events; returns how many were
    /// attempted.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let now = self.clock.now();
        let lease = self.settings.lease.max(self.settings.request_timeout);
        let events = self
            .outbox
            .claim_events(
                now,
                self.settings.batch,
                &self.owner,
                now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX),
            )
            .await?;
        let attempted = events.len();
        let mut results = futures::stream::iter(events)
            .map(|event| async move {
                let outcome = self.attempt(&event).await;
                self.record(&event, outcome).await
            })
            .buffer_unordered(self.settings.concurrency.max(1));
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(attempted)
    }

    async fn attempt(&self, event: &PendingEvent) -> Delivery {
        let now = self.clock.now();
        let signature = signature_header(
            &self.settings.secret,
            now.timestamp(),
            event.payload.as_bytes(),
        );
        let response = self
            .http
            .post(self.settings.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("Tokenvault-Event-Id", event.id.to_string())
            .header("Tokenvault-Event-Type", &event.event_type)
            .body(event.payload.clone())
            .send()
            .await;
        let error = match response {
            Ok(response) if response.status().is_success() => {
                metrics::counter!("tokenvault_webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                return Delivery::Delivered;
            }
            Ok(response) => format!("receiver answered HTTP {}", response.status().as_u16()),
            Err(err) => format!("request failed: {}", err.without_url()),
        };
        let attempt = event.attempts + 1;
        if attempt >= self.settings.max_attempts {
            metrics::counter!("tokenvault_webhook_deliveries_total", "outcome" => "abandoned")
                .increment(1);
            tracing::error!(event_id = %event.id, event_type = %event.event_type, attempt, %error, "webhook abandoned");
            return Delivery::Abandoned { error };
        }
        metrics::counter!("tokenvault_webhook_deliveries_total", "outcome" => "retry").increment(1);
        let delay = self.settings.backoff(attempt);
        tracing::warn!(event_id = %event.id, event_type = %event.event_type, attempt, %error, retry_in_ms = delay.as_millis() as u64, "webhook delivery failed");
        Delivery::Retry {
            at: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
            error,
        }
    }

    async fn record(&self, event: &PendingEvent, outcome: Delivery) -> Result<(), StoreError> {
        let now = self.clock.now();
        match outcome {
            Delivery::Delivered => {
                self.outbox
                    .event_delivered(event.id, &self.owner, now)
                    .await?;
            }
            Delivery::Retry { at, error } => {
                self.outbox
                    .event_failed(event.id, &self.owner, Some(at), &error, now)
                    .await?;
            }
            Delivery::Abandoned { error } => {
                self.outbox
                    .event_failed(event.id, &self.owner, None, &error, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs until `shutdown` turns true, delivering as events come due.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let idle = match self.deliver_due().await {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(err) => {
                        tracing::warn!(error = %err, "webhook outbox unavailable");
                        true
                    }
                };
                if *shutdown.borrow() {
                    return;
                }
                if idle {
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trip_and_tamper() {
        let secret = SecretString::from("whsec_test");
        let now = Utc::now();
        let body = br#"{"id":"1","type":"connection.created"}"#;
        let header = signature_header(&secret, now.timestamp(), body);
        let tolerance = Duration::from_secs(300);
        assert_eq!(
            verify_signature(&secret, &header, body, now, tolerance),
            Ok(())
        );
        assert_eq!(
            verify_signature(&secret, &header, b"{}", now, tolerance),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&SecretString::from("other"), &header, body, now, tolerance),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(
                &secret,
                &header,
                body,
                now + chrono::Duration::minutes(10),
                tolerance
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(&secret, "v1=abcd", body, now, tolerance),
            Err(SignatureError::Malformed)
        );
    }

    /// The vectors the TypeScript and Python SDKs check too.
    #[test]
    fn the_shared_signature_vectors_verify_as_documented() {
        let vectors: Value = serde_json::from_str(include_str!(
            "../../../tests/webhook/signature-vectors.json"
        ))
        .unwrap();
        let cases = vectors["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let text = |field: &str| case[field].as_str().unwrap();
            let now = DateTime::from_timestamp(case["now"].as_i64().unwrap(), 0).unwrap();
            let got = verify_signature(
                &SecretString::from(text("secret")),
                text("header"),
                text("body").as_bytes(),
                now,
                Duration::from_secs(case["tolerance_seconds"].as_u64().unwrap()),
            );
            let expected = match text("expect") {
                "ok" => Ok(()),
                "malformed" => Err(SignatureError::Malformed),
                "stale" => Err(SignatureError::Stale),
                "mismatch" => Err(SignatureError::Mismatch),
                other => panic!("unknown expectation {other}"),
            };
            assert_eq!(got, expected, "{}", text("name"));
        }
    }

    #[test]
    fn signature_matches_the_documented_formula() {
        // HMAC-SHA256("secret", "1700000000.{}") computed independently
        // (python3 -c "import hmac,hashlib;print(hmac.new(b'secret',b'1700000000.{}',hashlib.sha256).hexdigest())").
        let header = signature_header(&SecretString::from("secret"), 1_700_000_000, b"{}");
        assert_eq!(
            header,
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn disabled_events_record_nothing_and_payload_has_an_id() {
        let now = Utc::now();
        assert!(
            Events::disabled()
                .event(EventType::ConnectionCreated, json!({}), now)
                .is_none()
        );
        let events = Events::enabled(EventType::default_set());
        assert!(
            events
                .event(EventType::ConnectionRefreshed, json!({}), now)
                .is_none(),
            "connection.refreshed is off by default"
        );
        let event = events
            .event(
                EventType::ConnectionNeedsReauth,
                json!({"user_id": "u"}),
                now,
            )
            .unwrap();
        let body: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(body["id"], event.id.to_string());
        assert_eq!(body["type"], "connection.needs_reauth");
        assert_eq!(body["data"]["user_id"], "u");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let settings = WebhookSettings::new(
            Url::parse("http://127.0.0.1:1/hook").unwrap(),
            SecretString::from("s"),
        );
        let first = settings.backoff(1).as_secs_f64();
        assert!((4.0..=6.0).contains(&first), "{first}");
        let third = settings.backoff(3).as_secs_f64();
        assert!((16.0..=24.0).contains(&third), "{third}");
        assert!(settings.backoff(25) <= Duration::from_secs(4320));
    }
}
