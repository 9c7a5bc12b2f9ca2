//! Runs bulk actions: claims them under a lease, paces their sends, records
//! each item's outcome.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use tokio::sync::{Mutex, Notify, Semaphore, watch};
use tokio::time::Instant;

use super::{
    ActionState, BulkActionRecord, BulkActionView, BulkActions, BulkError, BulkItem, BulkSpec,
    ItemOutcome, ItemState, retry_delay,
};
use crate::api::{ApiRequest, RequestError, RequestOptions, SendGate};
use crate::domain::UserId;
use crate::refresh::{TokenError, chrono};
use crate::store::StoreError;

/// Knobs of [`BulkWorker`].
#[derive(Debug, Clone)]
pub struct BulkSettings {
    /// Requests in flight per running action.
    pub concurrency: usize,
    /// How long an action's lease lasts; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often an idle worker looks for runnable actions.
    pub poll: Duration,
    /// Actions one worker runs at once.
    pub max_running: usize,
    /// Transient failures (5xx, network, token endpoint down) before an
    /// item fails.
    pub max_failures: u32,
    /// 429 answers before an item fails.
    pub max_rate_limited: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// For a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
}

impl Default for BulkSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            lease_ttl: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            max_running: 4,
            max_failures: 5,
            max_rate_limited: 50,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            default_retry_after: Duration::from_secs(5),
        }
    }
}

/// Why [`BulkWorker::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every item reached a final state.
    Completed,
    Cancelled,
    /// Shutdown: requests in flight finished and the lease was released;
    /// any instance can go on with the rest.
    Stopped,
    /// Another instance holds the action now.
    LeaseLost,
}

/// Keeps the provider from seeing more than `capacity` requests in any
/// `window`, whatever the network does to their timing, and spaces sends
/// evenly in between.
///
/// The provider sees a request at some moment between its send and its
/// answer. So a send waits until fewer than `capacity` requests are either
/// in flight or answered within the last `window`: then any `window` of
/// the provider's clock can hold at most `capacity` arrivals (the latest
/// sent among them counted all the others when it went out). Answers come
/// back in milliseconds, so this costs a fraction of a percent of the rate.
struct Pacer {
    capacity: usize,
    window: Duration,
    spacing: Duration,
    next: Mutex<Instant>,
    slots: std::sync::Mutex<Slots>,
    freed: Notify,
}

struct Slots {
    in_flight: usize,
    /// When each request still inside the window was answered, oldest
    /// first.
    answered: VecDeque<Instant>,
}

impl Pacer {
    /// `rate` sends per second; the 1 % margin covers the two clocks'
    /// granularity.
    fn new(rate: f64) -> Self {
        let capacity = (rate.floor() as usize).max(1);
        let window = Duration::from_secs_f64(capacity as f64 / rate * 1.01);
        Self {
            capacity,
            window,
            spacing: window / capacity as u32,
            next: Mutex::new(Instant::now()),
            slots: std::sync::Mutex::new(Slots {
                in_flight: 0,
                answered: VecDeque::with_capacity(capacity),
            }),
            freed: Notify::new(),
        }
    }

    /// Lets no turn start before `wait` from now.
    async fn hold(&self, wait: Duration) {
        let mut next = self.next.lock().await;
        *next = (*next).max(Instant::now() + wait);
    }

    /// Waits for an evenly spaced turn (smoothing).
    async fn turn(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.spacing;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Waits until one more request keeps every window within capacity,
    /// and counts it in flight (the strict limit).
    async fn send(&self) {
        loop {
            let (wait, freed) = {
                let mut slots = self.slots.lock().expect("pacer lock");
                let now = Instant::now();
                while slots
                    .answered
                    .front()
                    .is_some_and(|at| *at + self.window <= now)
                {
                    slots.answered.pop_front();
                }
                if slots.in_flight + slots.answered.len() < self.capacity {
                    slots.in_flight += 1;
                    return;
                }
                // Registered before the lock is released: an answer that
                // lands in between still wakes us.
                let freed = self.freed.notified();
                (slots.answered.front().map(|at| *at + self.window), freed)
            };
            match wait {
                Some(at) => tokio::time::sleep_until(at).await,
                // Everything is in flight: the first answer starts the
                // clock.
                None => freed.await,
            }
        }
    }

    fn answer(&self) {
        let mut slots = self.slots.lock().expect("pacer lock");
        slots.in_flight = slots.in_flight.saturating_sub(1);
        slots.answered.push_back(Instant::now());
        drop(slots);
        self.freed.notify_waiters();
    }
}

#[async_trait::async_trait]
impl SendGate for Pacer {
    async fn ready(&self) {
        self.send().await;
    }

    fn answered(&self) {
        self.answer();
    }
}

/// Claims runnable actions and runs them; every instance may run one.
#[derive(Clone)]
pub struct BulkWorker {
    actions: BulkActions,
    settings: BulkSettings,
}

impl BulkWorker {
    pub fn new(actions: BulkActions, settings: BulkSettings) -> Self {
        Self { actions, settings }
    }

    /// The lease owner: this process's vault owner id.
    pub fn owner(&self) -> &str {
        self.actions.vault().owner()
    }

    /// Runs until `shutdown` turns true; then lets every running action
    /// finish its requests in flight and release its lease.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            loop {
                if *shutdown.borrow() {
                    break;
                }
                while running.len() < self.settings.max_running {
                    match self.claim().await {
                        Ok(Some(action)) => {
                            let worker = self.clone();
                            let stop = shutdown.clone();
                            running.spawn(async move {
                                let id = action.id;
                                match worker.run_leased(action, stop).await {
                                    Ok(end) => tracing::info!(action = %id, end = ?end, "bulk action run ended"),
                                    Err(err) => tracing::error!(action = %id, error = %err, "bulk action run failed"),
                                }
                            });
                        }
                        Ok(None) => break,
                        Err(err) => {
                            tracing::warn!(error = %err, "claiming a bulk action failed");
                            break;
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.poll) => {}
                    () = stop_requested(&mut shutdown) => {}
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            while running.join_next().await.is_some() {}
        })
    }

    async fn claim(&self) -> Result<Option<BulkActionRecord>, StoreError> {
        let now = self.actions.vault().clock().now();
        self.actions
            .store()
            .claim_action(self.owner(), now, now + chrono(self.settings.lease_ttl))
            .await
    }

    /// Persists an action already leased to this worker, so that no other
    /// runner (a `serve` instance on the same database) starts it before
    /// [`BulkWorker::run`] does here.
    pub async fn create(&self, spec: BulkSpec) -> Result<BulkActionView, BulkError> {
        let until = self.actions.vault().clock().now() + chrono(self.settings.lease_ttl);
        self.actions
            .create(spec, Some((self.owner().to_owned(), until)))
            .await
    }

    /// Runs action `id` here until it completes, is cancelled, another
    /// runner takes it over, or `shutdown` turns true. While a live runner
    /// elsewhere holds it, waits for that lease to end (and returns how the
    /// action ended if it ends there). An action already finished returns
    /// its end at once. Leases belong to the process (its vault's owner id),
    /// so within one process run an action from one place: here, or the
    /// [`BulkWorker::spawn`] loop.
    pub async fn run(
        &self,
        id: uuid::Uuid,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RunEnd, BulkError> {
        let store = self.actions.store();
        loop {
            let now = self.actions.vault().clock().now();
            let until = now + chrono(self.settings.lease_ttl);
            if let Some(action) = store.take_action(id, self.owner(), now, until).await? {
                return Ok(self.run_leased(action, shutdown).await?);
            }
            let action = store.get(id).await?.ok_or(BulkError::NotFound)?;
            let wait = match action.state {
                ActionState::Completed => return Ok(RunEnd::Completed),
                ActionState::Cancelled => return Ok(RunEnd::Cancelled),
                // Held by a live runner: look again when its lease would
                // run out (it is renewed while that runner lives).
                ActionState::Active => action
                    .lease_until
                    .and_then(|until| (until - now).to_std().ok())
                    .unwrap_or_default()
                    .clamp(self.settings.poll, self.settings.lease_ttl),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop_requested(&mut shutdown) => return Ok(RunEnd::Stopped),
            }
        }
    }

    /// Runs one action we hold the lease of until it completes, is
    /// cancelled, the lease is lost, or `shutdown` turns true.
    async fn run_leased(
        &self,
        action: BulkActionRecord,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RunEnd, StoreError> {
        let store = Arc::clone(self.actions.store());
        let clock = Arc::clone(self.actions.vault().clock());
        let id = action.id;
        let owner = self.owner().to_owned();
        let request = action
            .spec
            .request
            .to_api_request()
            .map_err(|err| StoreError::Corrupt(format!("bulk action {id}: {err}")))?;
        let interrupted = store
            .recover_interrupted(id, action.spec.request.is_idempotent(), clock.now())
            .await?;
        if interrupted > 0 {
            tracing::warn!(action = %id, interrupted, resent = action.spec.request.is_idempotent(), "items were in flight when their previous runner stopped");
        }
        let pacer = Arc::new(Pacer::new(action.rate_per_second));
        // A runner before us (stopped, crashed, or on another instance) may
        // have used this window already, and the provider counts those
        // requests too: start a window later. The margin covers clock skew
        // between instances.
        if let Some(last) = store.last_sent(id).await? {
            let recent = pacer.window + Duration::from_secs(2);
            if (clock.now() - last).to_std().unwrap_or_default() < recent {
                pacer.hold(pacer.window).await;
            }
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let store = Arc::clone(&store);
            let clock = Arc::clone(&clock);
            let lost = Arc::clone(&lost);
            let owner = owner.clone();
            let ttl = self.settings.lease_ttl;
            tokio::spawn(async move {
                let mut renewed_at = Instant::now();
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store
                        .renew_action(id, &owner, clock.now() + chrono(ttl))
                        .await
                    {
                        Ok(true) => renewed_at = Instant::now(),
                        Ok(false) => break,
                        // Keep sending only while the lease surely holds.
                        Err(err) if renewed_at.elapsed() < ttl * 2 / 3 => {
                            tracing::warn!(action = %id, error = %err, "renewing the bulk action lease failed; retrying");
                        }
                        Err(err) => {
                            tracing::error!(action = %id, error = %err, "cannot renew the bulk action lease; stopping");
                            break;
                        }
                    }
                }
                lost.store(true, Ordering::SeqCst);
            })
        };
        let concurrency = self.settings.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(concurrency));
        let batch = u32::try_from(concurrency * 2).unwrap_or(u32::MAX);
        let end = 'run: loop {
            if *shutdown.borrow() {
                break RunEnd::Stopped;
            }
            if lost.load(Ordering::SeqCst) {
                break RunEnd::LeaseLost;
            }
            let now = clock.now();
            let due = match store.due_items(id, now, batch).await {
                Ok(due) => due,
                Err(err) => {
                    tracing::warn!(action = %id, error = %err, "reading due bulk items failed");
                    pause(&mut shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            if due.is_empty() {
                if permits.available_permits() == concurrency
                    && self.try_complete(&action, &owner).await?
                {
                    break RunEnd::Completed;
                }
                let wait = match store.next_due(id).await? {
                    Some(at) => (at - clock.now()).to_std().unwrap_or_default(),
                    None => Duration::from_millis(50),
                };
                pause(
                    &mut shutdown,
                    wait.clamp(Duration::from_millis(10), Duration::from_millis(250)),
                )
                .await;
                continue;
            }
            for item in due {
                let permit = tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
                    () = stop_requested(&mut shutdown) => continue 'run,
                };
                tokio::select! {
                    () = pacer.turn() => {}
                    () = stop_requested(&mut shutdown) => continue 'run,
                }
                if lost.load(Ordering::SeqCst) {
                    continue 'run;
                }
                let attempt = i32::try_from(item.attempts + 1).unwrap_or(i32::MAX);
                if !store.start_item(id, item.seq, attempt, clock.now()).await? {
                    continue; // cancelled meanwhile
                }
                let worker = self.clone();
                let request = request.clone();
                let pacer = Arc::clone(&pacer);
                let action = action.clone();
                let lost = Arc::clone(&lost);
                tokio::spawn(async move {
                    let outcome = worker.send(&action, &item, request, pacer).await;
                    if !worker.record(&action, &item, attempt, &outcome).await {
                        // The outcome could not be written: stop so a later
                        // run recovers the item instead of this one waiting
                        // forever for it.
                        lost.store(true, Ordering::SeqCst);
                    }
                    drop(permit);
                });
            }
        };
        // Requests in flight finish and record their outcome.
        let _ = permits.acquire_many(concurrency as u32).await;
        renewer.abort();
        let end = match end {
            RunEnd::LeaseLost => match store.get(id).await?.map(|a| a.state) {
                Some(ActionState::Cancelled) => RunEnd::Cancelled,
                _ => RunEnd::LeaseLost,
            },
            RunEnd::Stopped => {
                store.release_action(id, &owner).await?;
                RunEnd::Stopped
            }
            other => other,
        };
        Ok(end)
    }

    async fn try_complete(
        &self,
        action: &BulkActionRecord,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let store = self.actions.store();
        let counts = store.counts(action.id).await?;
        if counts[&ItemState::Pending] + counts[&ItemState::Running] > 0 {
            return Ok(false);
        }
        let now = self.actions.vault().clock().now();
        let event = self
            .actions
            .completed_event(action, ActionState::Completed, &counts, now);
        let completed = store
            .complete(action.id, owner, now, event.as_ref())
            .await?;
        if completed {
            tracing::info!(action = %action.id, ?counts, "bulk action completed");
        }
        Ok(completed)
    }

    /// Sends one item's request and classifies the answer.
    async fn send(
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
            RequestError::Token(TokenError::ProviderUnavailable {
                reason,
                retry_after,
            }) => self.transient(
                item,
                None,
                "provider_unavailable",
                Some(reason),
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

    /// Writes the outcome; database hiccups are retried for about 30 s
    /// because losing a success would send it again after a restart.
    async fn record(
        &self,
        action: &BulkActionRecord,
        item: &BulkItem,
        attempt: i32,
        outcome: &ItemOutcome,
    ) -> bool {
        let store = self.actions.store();
        let mut delay = Duration::from_millis(100);
        for _ in 0..9 {
            let now = self.actions.vault().clock().now();
            match store
                .finish_item(action.id, item.seq, attempt, outcome, now)
                .await
            {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::warn!(action = %action.id, seq = item.seq, "the bulk item was taken over before its outcome was recorded");
                    return true;
                }
                Err(err) => {
                    tracing::warn!(action = %action.id, seq = item.seq, error = %err, "recording a bulk item outcome failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        false
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

async fn pause(shutdown: &mut watch::Receiver<bool>, wait: Duration) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = stop_requested(shutdown) => {}
    }
}

/// Resolves once a stop is requested; never, when the sender is gone
/// (an embedder that dropped it never asks to stop).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the provider could have seen more than `capacity` requests
    /// within one `window`: each request, sent at `s` and answered at `r`,
    /// may arrive anywhere in `[s, r]`; the worst window starts at some
    /// answer.
    fn worst_window(requests: &[(Duration, Duration)], window: Duration) -> usize {
        requests
            .iter()
            .map(|(_, start)| {
                requests
                    .iter()
                    .filter(|(s, r)| *s < *start + window && *r >= *start)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_never_lets_more_than_the_rate_through_in_any_second() {
        let pacer = Pacer::new(10.0);
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..45 {
            pacer.turn().await;
            pacer.send().await;
            let at = Instant::now() - start;
            pacer.answer();
            sent.push((at, at));
        }
        assert!(worst_window(&sent, Duration::from_secs(1)) <= 10);
        // And it is not needlessly slow: 45 sends at 10/s take about 4.5 s.
        let total = sent.last().unwrap().0;
        assert!(total < Duration::from_millis(4700), "{total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_and_uneven_answers_cannot_bunch_arrivals_at_the_provider() {
        let pacer = Arc::new(Pacer::new(20.0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let pacer = Arc::clone(&pacer);
            tasks.spawn(async move {
                // Retries skip the smoothing turn: go straight to the gate.
                if i % 3 != 0 {
                    pacer.turn().await;
                }
                pacer.send().await;
                let sent = Instant::now() - start;
                // Latency from 0 to 700 ms, unevenly.
                tokio::time::sleep(Duration::from_millis((i * 7919) % 701)).await;
                pacer.answer();
                (sent, Instant::now() - start)
            });
        }
        let requests: Vec<_> = tasks.join_all().await;
        assert_eq!(requests.len(), 200);
        let worst = worst_window(&requests, Duration::from_secs(1));
        assert!(
            worst <= 20,
            "{worst} requests could arrive within one second"
        );
    }
}
