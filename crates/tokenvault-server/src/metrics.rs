//! Prometheus metrics on their own listener (default `127.0.0.1:9464`), away
//! from the API: the recorder behind the `metrics` facade the library emits
//! through, `GET /metrics`, HTTP request metrics, gauges read from the
//! database, and state-store timing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokenvault::domain::ConnectionStatus;
use tokenvault::oauth_state::{StateError, StateKey, StateRecord, StateStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::AppState;

/// Histogram buckets in seconds, 1 ms … 30 s: from a state-store read to a
/// refresh that waited out retries.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the database-backed gauges are recomputed.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// Histogram upkeep interval (drains recorded samples into the buckets).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder on first call and returns its handle;
/// later calls (tests start many services in one process) share it.
///
/// # Panics
/// If some other global `metrics` recorder was installed first.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            handle
        })
        .clone()
}

/// `# HELP` lines, so a scrape explains itself.
fn describe() {
    describe_counter!(
        "tokenvault_http_requests_total",
        "HTTP requests on the API listener by method, route template and status."
    );
    describe_histogram!(
        "tokenvault_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency on the API listener by method and route template."
    );
    describe_counter!(
        "tokenvault_token_reads_total",
        "Token reads by outcome: fresh, refreshed, stale, needs_reauth, not_connected, unavailable, error."
    );
    describe_counter!(
        "tokenvault_refresh_total",
        "Provider refresh calls by integration and outcome (success or the failure class)."
    );
    describe_histogram!(
        "tokenvault_refresh_duration_seconds",
        Unit::Seconds,
        "Duration of one provider refresh call, by integration."
    );
    describe_gauge!(
        "tokenvault_circuit_state",
        "Circuit breaker of an integration in this instance: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        "tokenvault_integration_misconfigured",
        "1 while the provider rejects an integration's client credentials."
    );
    describe_counter!(
        "tokenvault_webhook_deliveries_total",
        "Webhook delivery attempts by outcome: delivered, retry, abandoned."
    );
    describe_gauge!(
        "tokenvault_webhook_outbox_pending",
        "Webhook events not yet delivered or abandoned (whole database)."
    );
    describe_gauge!(
        "tokenvault_connections",
        "Connections by status (whole database)."
    );
    describe_gauge!(
        "tokenvault_connections_due_within_1h",
        "Refreshable connections whose next refresh is due within an hour (whole database)."
    );
    describe_histogram!(
        "tokenvault_state_store_duration_seconds",
        Unit::Seconds,
        "OAuth state store latency by operation and outcome (ok, error)."
    );
}

/// `GET /metrics` in the text exposition format; anything else is 404.
/// No API key: the listener is meant for a private interface.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render()) }
        }),
    )
}

/// The running metrics listener and its background tasks.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl MetricsServer {
    /// Where `/metrics` is served (the bound port when `bind` had port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the listener (after requests in flight), the upkeep and the gauges.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// What `serve` runs: the `/metrics` listener with histogram upkeep, and the
/// gauge task over `state`.
pub fn start(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    state: &AppState,
) -> std::io::Result<MetricsServer> {
    let (stop, stopping) = watch::channel(false);
    let (addr, listener) = spawn_listener(listener, handle, stopping.clone())?;
    let gauges = spawn_gauges(state.clone(), GAUGE_INTERVAL, stopping);
    Ok(MetricsServer {
        addr,
        stop,
        tasks: vec![listener, gauges],
    })
}

/// Serves [`router`] on `listener` until `shutdown` turns true, running the
/// handle's upkeep meanwhile.
pub fn spawn_listener(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let app = router(handle.clone());
    let task = tokio::spawn(async move {
        let upkeep = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                ticks.tick().await;
                handle.run_upkeep();
            }
        });
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped(&mut shutdown).await })
            .await;
        upkeep.abort();
        if let Err(err) = served {
            tracing::error!(error = %err, "metrics listener failed");
        }
    });
    Ok((addr, task))
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Sets the database-backed gauges now and every `every` until `shutdown`.
/// The counts cover the whole database, so every instance reports the same
/// values: aggregate them with `max`, not `sum`.
pub fn spawn_gauges(
    state: AppState,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped(&mut shutdown) => return,
            }
            update_gauges(&state).await;
        }
    })
}

/// One pass of [`spawn_gauges`]. A failed query keeps the previous value
/// (and logs): a gap is better than a false zero.
pub async fn update_gauges(state: &AppState) {
    let store = state.vault.database();
    let now = state.vault.clock().now();
    match store.count_by_status().await {
        Ok(counts) => {
            // Every status, zero included, so an alert on one has a series to watch.
            for status in ConnectionStatus::ALL {
                let count = counts.get(&status).copied().unwrap_or(0);
                metrics::gauge!("tokenvault_connections", "status" => status.as_str())
                    .set(count as f64);
            }
        }
        Err(err) => tracing::warn!(error = %err, "metrics: counting connections failed"),
    }
    match store
        .count_due_before(now + chrono::Duration::hours(1))
        .await
    {
        Ok(due) => metrics::gauge!("tokenvault_connections_due_within_1h").set(due as f64),
        Err(err) => tracing::warn!(error = %err, "metrics: counting due connections failed"),
    }
    match store.count_pending_events().await {
        Ok(pending) => metrics::gauge!("tokenvault_webhook_outbox_pending").set(pending as f64),
        Err(err) => tracing::warn!(error = %err, "metrics: counting pending webhooks failed"),
    }
    // The breaker moves from open to half-open by the clock alone, with no
    // refresh to record it: re-read it here.
    for integration in state.integrations.all() {
        let key = integration.key();
        let Some(health) = state.vault.integration_health(key) else {
            continue;
        };
        let circuit = match health.circuit {
            "closed" => 0.0,
            "half_open" => 1.0,
            _ => 2.0,
        };
        metrics::gauge!("tokenvault_circuit_state", "integration" => key.to_string()).set(circuit);
        metrics::gauge!("tokenvault_integration_misconfigured", "integration" => key.to_string())
            .set(if health.misconfigured.is_some() {
                1.0
            } else {
                0.0
            });
    }
}

/// Middleware of the API router: counts requests and times them by method,
/// route template and status. The template (`/v1/users/{user_id}/…`), never
/// the raw path, which holds user ids and would make a series per user;
/// requests no route matched are `unmatched`.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    record_http(method, route, response.status(), started.elapsed());
    response
}

/// Counts one answered request and its latency (what [`track_http`] does;
/// the API router records through its single per-request layer). Without
/// the recorder (`metrics_bind` unset) there is nothing to record into.
pub fn record_http(method: &'static str, route: &str, status: StatusCode, elapsed: Duration) {
    if HANDLE.get().is_none() {
        return;
    }
    let (requests, duration) = http_series(method, route, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

/// The request counter and latency histogram of one method, route template
/// and status.
type HttpSeries = (metrics::Counter, metrics::Histogram);

/// Every [`HttpSeries`] recorded so far, by route template. Looking a
/// handle up in the recorder builds a labelled key (three label strings,
/// a vector) and searches the recorder's registry on every request; this
/// keeps the handles, so a request costs a read lock and a short scan.
/// Bounded: route templates and methods are finite sets, statuses few.
/// Sound because [`install`] sets no idle timeout: the recorder never drops
/// a series, so a kept handle stays the one `/metrics` renders.
static HTTP_SERIES: LazyLock<RwLock<HashMap<Box<str>, Vec<RouteSeries>>>> =
    LazyLock::new(Default::default);

/// One route's [`HttpSeries`] for a method and status.
type RouteSeries = (&'static str, StatusCode, HttpSeries);

fn http_series(method: &'static str, route: &str, status: StatusCode) -> HttpSeries {
    let find = |series: &[RouteSeries]| {
        series
            .iter()
            .find(|(m, s, _)| *m == method && *s == status)
            .map(|(_, _, handles)| handles.clone())
    };
    let known = HTTP_SERIES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(route)
        .and_then(|series| find(series));
    if let Some(handles) = known {
        return handles;
    }
    let mut all = HTTP_SERIES.write().unwrap_or_else(PoisonError::into_inner);
    let series = all.entry(route.into()).or_default();
    if let Some(handles) = find(series) {
        return handles;
    }
    let route = route.to_owned();
    let handles = (
        metrics::counter!(
            "tokenvault_http_requests_total",
            "method" => method,
            "route" => route.clone(),
            "status" => status.as_str().to_owned()
        ),
        metrics::histogram!(
            "tokenvault_http_request_duration_seconds",
            "method" => method,
            "route" => route
        ),
    );
    series.push((method, status, handles.clone()));
    handles
}

/// Standard methods by name; anything else is `other` (a client must not be
/// able to mint label values).
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Times every call of a [`StateStore`], whatever the backend (Redis, SQL),
/// as `tokenvault_state_store_duration_seconds{op, outcome}`.
pub struct TimedStateStore {
    inner: Arc<dyn StateStore>,
}

impl TimedStateStore {
    pub fn wrap(inner: Arc<dyn StateStore>) -> Arc<dyn StateStore> {
        Arc::new(Self { inner })
    }
}

async fn timed<T>(
    op: &'static str,
    call: impl Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    let started = Instant::now();
    let result = call.await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!("tokenvault_state_store_duration_seconds", "op" => op, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    result
}

#[async_trait::async_trait]
impl StateStore for TimedStateStore {
    async fn put(
        &self,
        key: &StateKey,
        record: &StateRecord,
        ttl: Duration,
    ) -> Result<(), StateError> {
        timed("put", self.inner.put(key, record, ttl)).await
    }

    async fn take(&self, key: &str) -> Result<Option<StateRecord>, StateError> {
        timed("take", self.inner.take(key)).await
    }

    async fn peek(&self, key: &str) -> Result<Option<StateRecord>, StateError> {
        timed("peek", self.inner.peek(key)).await
    }

    async fn purge_expired(&self) -> Result<u64, StateError> {
        timed("purge_expired", self.inner.purge_expired()).await
    }

    async fn ping(&self) -> Result<(), StateError> {
        timed("ping", self.inner.ping()).await
    }
}
