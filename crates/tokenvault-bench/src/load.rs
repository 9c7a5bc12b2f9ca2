//! Closed-loop HTTP/1.1 load: `concurrency` workers, each on its own
//! keep-alive connection, sending the next request as soon as the previous
//! answer is read. Latencies of requests completed inside the measurement
//! window (after a warm-up) go into one sorted list for percentiles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub struct Load {
    pub addr: SocketAddr,
    /// Worker `w` sends `paths[(w + k) % len]` as its `k`-th request.
    pub paths: Arc<Vec<String>>,
    pub bearer: Option<String>,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Each request for a uniformly random path instead of the next one.
    pub random: bool,
}

/// A small, fast, seeded generator (xorshift64*): the load's choice of
/// user must cost nothing next to the request.
pub struct Random(u64);

impl Random {
    pub fn new(seed: usize) -> Self {
        Self((seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform enough in `0..n` for picking among `n` users.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((u128::from(x) * n as u128) >> 64) as usize
    }
}

/// A closed loop without HTTP: `concurrency` workers, each calling the
/// operation its `make(worker)` returns back to back; the latencies (µs)
/// of the calls completed inside the window after `warmup`.
pub async fn closed_loop<M, O, F>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    make: M,
) -> anyhow::Result<Vec<u32>>
where
    M: Fn(usize) -> O,
    O: FnMut() -> F + Send + 'static,
    F: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + duration);
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut operation = make(worker);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(64 * 1024);
            loop {
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                operation().await?;
                let done = Instant::now();
                if sent >= from && done <= until {
                    latencies.push(
                        u32::try_from(done.duration_since(sent).as_micros()).unwrap_or(u32::MAX),
                    );
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    Ok(latencies)
}

impl LoadResult {
    /// The figures of requests whose latencies (µs) are `latencies`,
    /// measured over `duration` in all.
    pub fn of(mut latencies: Vec<u32>, duration: Duration) -> anyhow::Result<Self> {
        if latencies.is_empty() {
            bail!("no request completed inside the measurement window");
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
            f64::from(latencies[index - 1]) / 1000.0
        };
        Ok(Self {
            requests: latencies.len() as u64,
            rps: latencies.len() as f64 / duration.as_secs_f64(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

impl Load {
    /// The latencies (µs) of the requests completed in the measurement
    /// window.
    pub async fn latencies(&self) -> anyhow::Result<Vec<u32>> {
        let start = Instant::now();
        let window = (start + self.warmup, start + self.warmup + self.duration);
        let mut workers = Vec::with_capacity(self.concurrency);
        for worker in 0..self.concurrency {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            workers.push(tokio::spawn(worker_loop(
                sender,
                worker,
                Arc::clone(&self.paths),
                self.bearer.clone(),
                self.addr,
                window,
                self.random,
            )));
        }
        let mut latencies = Vec::new();
        for worker in workers {
            latencies.extend(worker.await??);
        }
        Ok(latencies)
    }
}

/// Returns the latencies (µs) of the requests that completed in `window`.
async fn worker_loop(
    mut sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    worker: usize,
    paths: Arc<Vec<String>>,
    bearer: Option<String>,
    addr: SocketAddr,
    (from, until): (Instant, Instant),
    random: bool,
) -> anyhow::Result<Vec<u32>> {
    let mut generator = Random::new(worker);
    let host = addr.to_string();
    let authorization = bearer.map(|key| format!("Bearer {key}"));
    let mut latencies = Vec::with_capacity(64 * 1024);
    for k in 0.. {
        let sent = Instant::now();
        if sent >= until {
            break;
        }
        let index = if random {
            generator.below(paths.len())
        } else {
            (worker + k) % paths.len()
        };
        let mut request =
            Request::get(paths[index].as_str()).header(hyper::header::HOST, host.as_str());
        if let Some(authorization) = &authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization.as_str());
        }
        sender.ready().await?;
        let response = sender.send_request(request.body(Empty::new())?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{} answered {status}: {}",
                paths[index],
                String::from_utf8_lossy(&body)
            );
        }
        let done = Instant::now();
        if sent >= from && done <= until {
            latencies
                .push(u32::try_from(done.duration_since(sent).as_micros()).unwrap_or(u32::MAX));
        }
    }
    Ok(latencies)
}
