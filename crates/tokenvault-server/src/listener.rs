//! The listener, beneath the HTTP API of [`crate::http`]: accepts client
//! connections and serves the router on them, with limits that slow or
//! idle clients cannot exhaust.
//!
//! - **Header-read timeout** (HTTP/1.1, hyper's): a connection that has not
//!   sent a whole request head within `header_read_timeout` after
//!   connecting, or after its previous answer, is closed; clients that
//!   dribble their headers a byte at a time cannot hold a connection, and
//!   idle keep-alive connections end after it too.
//! - **Idle timeout**: any connection (HTTP/2 too) without a request in
//!   progress for `idle_timeout` is closed.
//! - **Connection cap**: at most `max_connections` are open. At the cap, a
//!   new connection replaces the open one that has waited longest without a
//!   request in progress (a slow or idle client); when every connection is
//!   busy with a request, the new one is answered 503
//!   `too_many_connections`. The default cap leaves room under the file
//!   descriptor limit for the database pool and provider calls, so the
//!   process never fails `accept` with "too many open files".
//!
//! `serve` is what `tokenvault serve` and the tests both run.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt as _;

/// File descriptors kept free of client connections: the database pool,
/// Redis, provider calls, the journal and SQLite files, the listeners.
const DESCRIPTOR_RESERVE: usize = 128;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let reserve = DESCRIPTOR_RESERVE + config.database_max_connections as usize;
        let room = descriptor_limit().map(|limit| limit.saturating_sub(reserve).max(16));
        let max_connections = match (config.max_connections, room) {
            (0, Some(room)) => room,
            (0, None) => 10_000,
            (wanted, Some(room)) if wanted > room => {
                tracing::warn!(
                    max_connections = wanted,
                    room,
                    "max_connections exceeds what the file descriptor limit leaves room for; using {room}"
                );
                room
            }
            (wanted, _) => wanted,
        };
        Self {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(config.keep_alive_idle_secs.max(1)),
            max_connections,
        }
    }
}

/// The soft limit on open files (Linux: /proc/self/limits).
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets every connection finish its request in progress, and
/// returns when all are closed (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let registry = Arc::new(Registry::default());
    let (stop, stopping) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    tracing::debug!(?limits, "serving");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: wait for descriptors to free up
                    // instead of spinning (axum::serve does the same).
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        if registry.open() >= limits.max_connections && !registry.evict_longest_waiting() {
            metrics::counter!("tokenvault_http_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        }
        let tracked = registry.insert();
        tokio::spawn(serve_connection(
            (stream, peer.ip()),
            router.clone(),
            builder.clone(),
            tracked,
            Arc::clone(&registry),
            limits,
            stopping.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    registry.closed().await;
    Ok(())
}

/// The answer to a connection over the cap when none can be replaced.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":"too_many_connections","message":"the service is at its connection limit; retry shortly","request_id":""}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
}

async fn serve_connection(
    (stream, peer): (TcpStream, std::net::IpAddr),
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let in_service = Arc::clone(&tracked);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let request_guard = InFlight::start(Arc::clone(&in_service));
        let router = router.clone();
        async move {
            let mut request = request.map(Body::new);
            // Only sign-in needs the client's address (its attempts are
            // limited per address): other requests skip the allocation.
            if request.uri().path().starts_with("/admin/login") {
                request
                    .extensions_mut()
                    .insert(crate::http::admin::ClientAddress(peer));
            }
            let response = router
                .oneshot(request)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            // The request counts as in progress until its body is sent.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(GuardedBody {
                    inner: body,
                    _guard: request_guard,
                })
            }))
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let idle_check =
            tokio::time::sleep_until(tracked.idle_deadline(limits.idle_timeout).into());
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                break;
            }
            // Dropping the connection closes the socket at once.
            () = tracked.evict.notified() => {
                metrics::counter!("tokenvault_http_connections_evicted_total").increment(1);
                break;
            }
            changed = stopping.changed(), if !closing => {
                if changed.is_err() || *stopping.borrow() {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = idle_check, if !closing => {
                if tracked.idle_for() >= limits.idle_timeout {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
    registry.remove(tracked.id);
}

/// The open connections, for the cap and for eviction.
#[derive(Default)]
struct Registry {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
    /// Connections told to close but not closed yet: not counted against
    /// the cap, or a burst would evict several for one newcomer.
    evicting: AtomicUsize,
    all_closed: Notify,
}

impl Registry {
    fn open(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner()).len();
        open.saturating_sub(self.evicting.load(Ordering::Relaxed))
    }

    fn insert(&self) -> Arc<Tracked> {
        let tracked = Arc::new(Tracked {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            evict: Notify::new(),
            evicted: AtomicBool::new(false),
        });
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.insert(tracked.id, Arc::clone(&tracked));
        metrics::gauge!("tokenvault_http_connections_open").set(open.len() as f64);
        tracked
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tracked) = open.remove(&id)
            && tracked.evicted.load(Ordering::Relaxed)
        {
            self.evicting.fetch_sub(1, Ordering::Relaxed);
        }
        metrics::gauge!("tokenvault_http_connections_open").set(open.len() as f64);
        if open.is_empty() {
            self.all_closed.notify_waiters();
        }
    }

    /// Tells the connection that has waited longest without a request in
    /// progress to close; false when every connection is busy.
    fn evict_longest_waiting(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let candidate = open
            .values()
            .filter(|t| {
                t.in_flight.load(Ordering::Relaxed) == 0 && !t.evicted.load(Ordering::Relaxed)
            })
            .min_by_key(|t| *t.idle_since.lock().unwrap_or_else(|e| e.into_inner()));
        match candidate {
            Some(tracked) => {
                tracked.evicted.store(true, Ordering::Relaxed);
                self.evicting.fetch_add(1, Ordering::Relaxed);
                // A stored permit: the connection sees it even if it is
                // not waiting on it right now.
                tracked.evict.notify_one();
                true
            }
            None => false,
        }
    }

    async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return;
            }
            notified.await;
        }
    }
}

/// One open connection.
struct Tracked {
    id: u64,
    /// Requests whose answer is not yet fully sent.
    in_flight: AtomicUsize,
    /// When the connection last became free of requests (or opened).
    idle_since: Mutex<Instant>,
    evict: Notify,
    evicted: AtomicBool,
}

impl Tracked {
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    fn idle_deadline(&self, idle_timeout: Duration) -> Instant {
        Instant::now() + idle_timeout.saturating_sub(self.idle_for())
    }
}

/// Marks one request in progress on its connection until dropped.
struct InFlight(Arc<Tracked>);

impl InFlight {
    fn start(tracked: Arc<Tracked>) -> Self {
        tracked.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(tracked)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in progress until it is sent.
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
