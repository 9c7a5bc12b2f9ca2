//! The device-session store on SQLite and PostgreSQL (a fresh database each):
//! round trips, leases, outcomes, and that concurrent claimers never claim
//! the same session.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;

use crate::common::*;
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use tokenvault::crypto::Envelope;
use tokenvault::device::{
    DeviceSessionStatus, DeviceSessionStore, NewDeviceSession, PollOutcome, ShownCode,
    SqlDeviceSessionStore,
};
use tokenvault::domain::{DeviceSessionId, Scopes};
use tokenvault::store::LastError;

struct Backend {
    store: Arc<dyn DeviceSessionStore>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite_backend() -> Backend {
    let (store, dir) = sqlite_store().await;
    Backend {
        store: Arc::new(SqlDeviceSessionStore::new(store.pool().clone())),
        _dir: Some(dir),
    }
}

async fn postgres_backend() -> Backend {
    let store = postgres_store().await;
    Backend {
        store: Arc::new(SqlDeviceSessionStore::new(store.pool().clone())),
        _dir: None,
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::sqlite_backend().await).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::postgres_backend().await).await })*
        }
    };
}

conformance!(
    insert_then_get_round_trips,
    claim_takes_only_due_unleased_pending_sessions,
    finish_poll_needs_the_lease_and_erases_the_device_code,
    concurrent_claimers_never_claim_the_same_session,
    purge_removes_only_old_finished_sessions,
);

async fn new_session(
    env: &Envelope,
    user: &str,
    next_poll_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> NewDeviceSession {
    let id = DeviceSessionId::new();
    let sealed = env
        .seal_device_code(id, &SecretString::from(format!("DC-{user}-secret")))
        .await
        .unwrap();
    NewDeviceSession {
        id,
        user_id: common::user(user),
        integration: integration("peer"),
        scopes: Scopes::parse("openid api:read", " "),
        sealed,
        interval_secs: 5,
        next_poll_at,
        expires_at: now + Duration::minutes(10),
        now,
        shown: ShownCode {
            user_code: format!("{}-CODE", user.to_uppercase()),
            verification_uri: "https://example.com/device".into(),
            verification_uri_complete: None,
        },
    }
}

fn pending(interval: u64, next: DateTime<Utc>) -> PollOutcome {
    PollOutcome {
        status: DeviceSessionStatus::Pending,
        interval_secs: interval,
        next_poll_at: next,
        last_error: None,
    }
}

async fn insert_then_get_round_trips(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let new = new_session(&env, "u1", now + Duration::seconds(5), now).await;
    let stored = b.store.insert(&new).await.unwrap();
    let got = b.store.get(new.id).await.unwrap().unwrap();
    for s in [&stored, &got] {
        assert_eq!(s.id, new.id);
        assert_eq!(s.user_id, new.user_id);
        assert_eq!(s.integration, new.integration);
        assert_eq!(s.scopes, new.scopes);
        assert_eq!(s.status, DeviceSessionStatus::Pending);
        assert_eq!(s.interval_secs, 5);
        assert_eq!(s.next_poll_at, new.next_poll_at);
        assert_eq!(s.expires_at, new.expires_at);
        assert_eq!(s.data_key, new.sealed.data_key);
        assert!(s.lease.is_none() && s.last_error.is_none());
        assert_eq!((s.created_at, s.updated_at), (now, now));
        assert_eq!(s.shown.as_ref(), Some(&new.shown));
    }
    let code = env
        .open_device_code(got.id, &got.data_key, got.device_code.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(code.expose_secret(), "DC-u1-secret");
    assert!(b.store.get(DeviceSessionId::new()).await.unwrap().is_none());
    // The status a caller sees turns to expired at expiry, poller or not.
    assert_eq!(got.status_at(now), DeviceSessionStatus::Pending);
    assert_eq!(got.status_at(got.expires_at), DeviceSessionStatus::Expired);
}

async fn claim_takes_only_due_unleased_pending_sessions(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let due_early = b
        .store
        .insert(&new_session(&env, "early", now - Duration::seconds(10), now).await)
        .await
        .unwrap();
    let due_late = b
        .store
        .insert(&new_session(&env, "late", now - Duration::seconds(1), now).await)
        .await
        .unwrap();
    let not_due = b
        .store
        .insert(&new_session(&env, "future", now + Duration::seconds(30), now).await)
        .await
        .unwrap();
    let finished = b
        .store
        .insert(&new_session(&env, "done", now - Duration::seconds(20), now).await)
        .await
        .unwrap();
    // Finish one through a claim of its own.
    let first = b
        .store
        .claim_due(now, 1, "node-z", now + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|s| s.id).collect::<Vec<_>>(),
        [finished.id],
        "soonest first"
    );
    let denied = PollOutcome {
        status: DeviceSessionStatus::Denied,
        ..pending(5, now)
    };
    assert!(
        b.store
            .finish_poll(finished.id, "node-z", &denied, now)
            .await
            .unwrap()
    );

    let lease_until = now + Duration::seconds(30);
    let claimed = b
        .store
        .claim_due(now, 10, "node-a", lease_until)
        .await
        .unwrap();
    let ids: HashSet<_> = claimed.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        HashSet::from([due_early.id, due_late.id]),
        "due and pending only"
    );
    for s in &claimed {
        let lease = s.lease.as_ref().unwrap();
        assert_eq!(
            (lease.owner.as_str(), lease.expires_at),
            ("node-a", lease_until)
        );
    }
    assert!(
        b.store
            .claim_due(now, 10, "node-b", lease_until)
            .await
            .unwrap()
            .is_empty(),
        "leased sessions are skipped"
    );
    // After the lease runs out another poller takes over (a crashed instance).
    let later = lease_until + Duration::seconds(1);
    let taken = b
        .store
        .claim_due(later, 10, "node-b", later + Duration::seconds(30))
        .await
        .unwrap();
    let ids: HashSet<_> = taken.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        HashSet::from([due_early.id, due_late.id, not_due.id]),
        "expired leases are reclaimable and the future one is due by now"
    );
}

async fn finish_poll_needs_the_lease_and_erases_the_device_code(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let s = b
        .store
        .insert(&new_session(&env, "u", now, now).await)
        .await
        .unwrap();
    let until = now + Duration::seconds(30);
    assert_eq!(
        b.store
            .claim_due(now, 5, "node-a", until)
            .await
            .unwrap()
            .len(),
        1
    );
    // Another owner cannot record an outcome.
    assert!(
        !b.store
            .finish_poll(s.id, "node-b", &pending(10, now), now)
            .await
            .unwrap()
    );
    // slow_down: still pending, slower, lease released, code kept.
    let next = now + Duration::seconds(10);
    let slow = PollOutcome {
        last_error: Some(LastError {
            code: "server_error".into(),
            message: "transient".into(),
        }),
        ..pending(10, next)
    };
    assert!(
        b.store
            .finish_poll(s.id, "node-a", &slow, now)
            .await
            .unwrap()
    );
    let got = b.store.get(s.id).await.unwrap().unwrap();
    assert_eq!(got.status, DeviceSessionStatus::Pending);
    assert_eq!((got.interval_secs, got.next_poll_at), (10, next));
    assert_eq!(got.last_error.as_ref().unwrap().code, "server_error");
    assert!(got.lease.is_none() && got.device_code.is_some());
    // Without a lease nobody can write.
    assert!(
        !b.store
            .finish_poll(s.id, "node-a", &pending(10, next), now)
            .await
            .unwrap()
    );
    assert!(
        b.store
            .claim_due(now, 5, "node-a", until)
            .await
            .unwrap()
            .is_empty(),
        "not due before next_poll_at"
    );

    // Finished: connected, the device code is erased, and it is final.
    let claimed = b.store.claim_due(next, 5, "node-b", until).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let connected = PollOutcome {
        status: DeviceSessionStatus::Connected,
        ..pending(10, next)
    };
    let at = next + Duration::seconds(1);
    assert!(
        b.store
            .finish_poll(s.id, "node-b", &connected, at)
            .await
            .unwrap()
    );
    let got = b.store.get(s.id).await.unwrap().unwrap();
    assert_eq!(got.status, DeviceSessionStatus::Connected);
    assert!(got.device_code.is_none(), "the device code is erased");
    assert!(got.lease.is_none() && got.last_error.is_none());
    assert_eq!(got.updated_at, at);
    assert!(
        b.store
            .claim_due(
                at + Duration::hours(1),
                5,
                "node-c",
                at + Duration::hours(2)
            )
            .await
            .unwrap()
            .is_empty(),
        "finished sessions are never claimed"
    );
}

async fn concurrent_claimers_never_claim_the_same_session(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let mut all = HashSet::new();
    for i in 0..120 {
        let new = new_session(&env, &format!("u{i}"), now - Duration::seconds(i), now).await;
        all.insert(b.store.insert(&new).await.unwrap().id);
    }
    let claimers = (0..4).map(|n| {
        let store = Arc::clone(&b.store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due(now, 5, &format!("node-{n}"), now + Duration::minutes(1))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break mine;
                }
                for s in &batch {
                    assert_eq!(s.lease.as_ref().unwrap().owner, format!("node-{n}"));
                }
                mine.extend(batch.into_iter().map(|s| s.id));
            }
        })
    });
    let mut seen = HashSet::new();
    for claimer in futures::future::join_all(claimers).await {
        for id in claimer.unwrap() {
            assert!(seen.insert(id), "{id} claimed twice");
        }
    }
    assert_eq!(seen, all);
}

async fn purge_removes_only_old_finished_sessions(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let old = now - Duration::days(8);
    let finished = b
        .store
        .insert(&new_session(&env, "finished", old, old).await)
        .await
        .unwrap();
    let stale_pending = b
        .store
        .insert(&new_session(&env, "pending", now + Duration::hours(1), old).await)
        .await
        .unwrap();
    b.store
        .claim_due(old, 1, "node", old + Duration::seconds(30))
        .await
        .unwrap();
    let expired = PollOutcome {
        status: DeviceSessionStatus::Expired,
        ..pending(5, old)
    };
    assert!(
        b.store
            .finish_poll(finished.id, "node", &expired, old)
            .await
            .unwrap()
    );
    assert_eq!(
        b.store
            .purge_finished(now - Duration::days(7))
            .await
            .unwrap(),
        1
    );
    assert!(b.store.get(finished.id).await.unwrap().is_none());
    assert!(b.store.get(stale_pending.id).await.unwrap().is_some());
}
