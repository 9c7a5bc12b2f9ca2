//! A circuit breaker per integration: when a provider keeps failing, stop
//! sending it refreshes for a while instead of spending every user's attempt
//! budget (and our latency) on it. Per process; each instance learns on its own.

use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive provider failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit rejects calls before letting trial calls through.
    pub open_for: Duration,
    /// Consecutive successes in half-open state that close it again.
    pub success_threshold: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(60),
            success_threshold: 3,
        }
    }
}

/// A circuit breaker's state: `closed` (calls go through), `open` (calls
/// are refused until the pause is over), `half_open` (trial calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(rename_all = "snake_case")
)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    failures: u32,
    successes: u32,
    opened_at: Option<DateTime<Utc>>,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            failures: 0,
            successes: 0,
            opened_at: None,
        }
    }

    pub fn state(&self, now: DateTime<Utc>) -> CircuitState {
        match self.opened_at {
            None => CircuitState::Closed,
            Some(at)
                if now
                    < at + chrono::Duration::from_std(self.settings.open_for)
                        .unwrap_or(chrono::Duration::MAX) =>
            {
                CircuitState::Open
            }
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Whether a call may go out now.
    pub fn allows(&self, now: DateTime<Utc>) -> bool {
        self.state(now) != CircuitState::Open
    }

    /// When an open circuit lets trial calls through.
    pub fn retry_at(&self) -> Option<DateTime<Utc>> {
        self.opened_at.map(|at| {
            at + chrono::Duration::from_std(self.settings.open_for).unwrap_or(chrono::Duration::MAX)
        })
    }

    pub fn on_success(&mut self, now: DateTime<Utc>) {
        self.failures = 0;
        match self.state(now) {
            CircuitState::Closed => {}
            CircuitState::HalfOpen | CircuitState::Open => {
                self.successes += 1;
                if self.successes >= self.settings.success_threshold {
                    self.opened_at = None;
                    self.successes = 0;
                }
            }
        }
    }

    pub fn on_failure(&mut self, now: DateTime<Utc>) {
        self.successes = 0;
        match self.state(now) {
            // One failed trial call reopens the circuit for another period.
            CircuitState::HalfOpen => self.opened_at = Some(now),
            CircuitState::Open => {}
            CircuitState::Closed => {
                self.failures += 1;
                if self.failures >= self.settings.failure_threshold {
                    self.opened_at = Some(now);
                    self.failures = 0;
                }
            }
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
        self.successes = 0;
        self.opened_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_five_half_opens_after_a_minute_closes_after_three() {
        let start = Utc::now();
        let mut breaker = CircuitBreaker::new(BreakerSettings::default());
        for _ in 0..4 {
            breaker.on_failure(start);
        }
        assert_eq!(breaker.state(start), CircuitState::Closed);
        breaker.on_failure(start);
        assert_eq!(breaker.state(start), CircuitState::Open);
        assert!(!breaker.allows(start + chrono::Duration::seconds(59)));
        let later = start + chrono::Duration::seconds(60);
        assert_eq!(breaker.state(later), CircuitState::HalfOpen);
        breaker.on_success(later);
        breaker.on_success(later);
        assert_eq!(breaker.state(later), CircuitState::HalfOpen);
        breaker.on_success(later);
        assert_eq!(breaker.state(later), CircuitState::Closed);
    }

    #[test]
    fn a_success_resets_the_failure_count_and_a_failed_trial_reopens() {
        let start = Utc::now();
        let mut breaker = CircuitBreaker::new(BreakerSettings::default());
        for _ in 0..4 {
            breaker.on_failure(start);
        }
        breaker.on_success(start);
        for _ in 0..4 {
            breaker.on_failure(start);
        }
        assert_eq!(breaker.state(start), CircuitState::Closed, "not 5 in a row");
        breaker.on_failure(start);
        let trial = start + chrono::Duration::seconds(61);
        assert_eq!(breaker.state(trial), CircuitState::HalfOpen);
        breaker.on_success(trial);
        breaker.on_failure(trial);
        assert_eq!(breaker.state(trial), CircuitState::Open);
        assert_eq!(
            breaker.state(trial + chrono::Duration::seconds(60)),
            CircuitState::HalfOpen
        );
    }

    /// The API document's names are the ones responses carry.
    #[cfg(feature = "utoipa")]
    #[test]
    fn schema_names_are_the_shown_names() {
        let schema =
            serde_json::to_value(<CircuitState as utoipa::PartialSchema>::schema()).unwrap();
        let shown: Vec<&str> = [
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
        ]
        .into_iter()
        .map(CircuitState::as_str)
        .collect();
        assert_eq!(schema["enum"], serde_json::json!(shown));
    }
}
