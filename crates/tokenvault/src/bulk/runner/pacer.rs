//! The pacer: at most `rate_per_second` requests reach the provider in any
//! one-second window, spaced evenly.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use crate::proxy::SendGate;

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
pub(super) struct Pacer {
    capacity: usize,
    pub(super) window: Duration,
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
    pub(super) fn new(rate: f64) -> Self {
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
    pub(super) async fn hold(&self, wait: Duration) {
        let mut next = self.next.lock().await;
        *next = (*next).max(Instant::now() + wait);
    }

    /// Waits for an evenly spaced turn (smoothing).
    pub(super) async fn turn(&self) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
