//! One contract, two backends: every test here runs against SQLite and
//! against PostgreSQL (a fresh database each).

use std::collections::HashSet;
use std::sync::Arc;

use crate::common;
use crate::common::*;
use chrono::{DateTime, Duration, Utc};
use tokenvault::domain::{ConnectionId, ConnectionStatus};
use tokenvault::store::{
    BatchUpdate, ConnectionRecord, HistoryEntry, HistoryKind, LastError, Lease, LeaseRenewal,
    ListCursor, ListFilter, MisconfiguredIntegration, OutboxEvent, StoreError,
};
use uuid::Uuid;

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::common::sqlite().await).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::common::postgres().await).await })*
        }
    };
}

conformance!(
    upsert_then_get_round_trips_every_field,
    reconnect_replaces_the_grant_but_keeps_created_at,
    a_replacing_upsert_writes_its_replace_events,
    list_by_user_and_keyset_paging,
    compare_and_swap_detects_conflicts,
    concurrent_writers_exactly_one_wins,
    claim_due_takes_only_due_unleased_refreshable_rows,
    concurrent_claims_never_overlap,
    leases_belong_to_their_owner,
    batched_renewals_compare_owner_and_version_per_row,
    delete_counts_and_purge,
    rotation_listing_and_rewrap,
    migrations_are_idempotent_and_newer_schema_is_refused,
    outbox_claims_oldest_first_and_honours_leases,
    delivered_events_leave_the_outbox,
    failed_events_retry_at_retry_at_or_are_abandoned,
    concurrent_event_claims_never_overlap,
    connection_writes_emit_events_in_the_same_transaction,
    misconfigured_is_marked_once_per_fingerprint,
    failing_since_round_trips_through_update,
    update_batch_compares_and_swaps_each_row,
    listing_filters_page_in_user_order,
    summary_counts_by_integration_and_status,
    history_is_written_with_the_change_and_paged_newest_first,
);

async fn upsert_then_get_round_trips_every_field(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let due = now() + Duration::minutes(55);
    let new = new_connection(
        &env,
        "user-1",
        "spotify",
        "AT-round-trip-0001",
        Some("RT-round-trip-0001"),
        Some(due),
    )
    .await;
    let stored = b.store.upsert(new.clone()).await.unwrap();
    let got = b
        .store
        .get(&user("user-1"), &integration("spotify"))
        .await
        .unwrap()
        .unwrap();
    for record in [&stored, &got] {
        assert_eq!(record.id, new.id);
        assert_eq!(record.status, ConnectionStatus::Connected);
        assert_eq!(record.scopes, new.scopes);
        assert_eq!(record.expires_at, new.expires_at);
        assert_eq!(record.next_refresh_at, Some(due));
        assert_eq!(record.metadata, new.metadata);
        assert_eq!(record.data_key, new.sealed.data_key);
        assert_eq!(record.version, 1);
        assert_eq!(record.refresh_attempts, 0);
        assert!(record.lease.is_none() && record.last_error.is_none());
        assert_eq!(record.created_at, new.now);
    }
    let (access, refresh) = env
        .open(
            got.id,
            &got.data_key,
            got.access_token.as_deref().unwrap(),
            got.refresh_token.as_deref(),
        )
        .await
        .unwrap();
    assert_eq!(access.expose(), "AT-round-trip-0001");
    assert_eq!(refresh.unwrap().expose(), "RT-round-trip-0001");
    assert_eq!(b.store.get_by_id(got.id).await.unwrap().unwrap().id, got.id);
    assert!(
        b.store
            .get(&user("user-2"), &integration("spotify"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.store
            .get_by_id(ConnectionId::new())
            .await
            .unwrap()
            .is_none()
    );
}

async fn reconnect_replaces_the_grant_but_keeps_created_at(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let first = b
        .store
        .upsert(
            new_connection(
                &env,
                "u",
                "google",
                "AT-first-000000001",
                Some("RT-1"),
                None,
            )
            .await,
        )
        .await
        .unwrap();
    // The first grant went bad.
    let mut failed = first.to_update(now());
    failed.status = ConnectionStatus::NeedsReauth;
    failed.refresh_attempts = 3;
    failed.last_error = Some(LastError {
        code: "invalid_grant".into(),
        message: "revoked".into(),
    });
    b.store
        .update(first.id, first.version, &failed)
        .await
        .unwrap();

    let second_new = new_connection(&env, "u", "google", "AT-second-00000002", None, None).await;
    let second = b.store.upsert(second_new.clone()).await.unwrap();
    assert_eq!(second.id, second_new.id);
    assert_ne!(second.id, first.id);
    assert_eq!(second.status, ConnectionStatus::Connected);
    assert_eq!(second.version, 3, "every write bumps the version");
    assert_eq!(second.refresh_attempts, 0);
    assert!(second.last_error.is_none());
    assert!(second.refresh_token.is_none());
    assert_eq!(second.created_at, first.created_at);
    assert_eq!(b.store.list_by_user(&user("u")).await.unwrap().len(), 1);
    let (access, _) = env
        .open(
            second.id,
            &second.data_key,
            second.access_token.as_deref().unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(access.expose(), "AT-second-00000002");
}

async fn list_by_user_and_keyset_paging(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    for i in 0..25 {
        let integration = if i % 2 == 0 { "spotify" } else { "github" };
        b.store
            .upsert(
                new_connection(
                    &env,
                    &format!("user-{i:02}"),
                    integration,
                    "AT-x",
                    None,
                    None,
                )
                .await,
            )
            .await
            .unwrap();
    }
    b.store
        .upsert(new_connection(&env, "user-00", "github", "AT-x", None, None).await)
        .await
        .unwrap();
    let mine = b.store.list_by_user(&user("user-00")).await.unwrap();
    assert_eq!(
        mine.iter()
            .map(|c| c.integration.as_str())
            .collect::<Vec<_>>(),
        ["github", "spotify"]
    );

    let filter = ListFilter {
        integration: Some(integration("spotify")),
        status: Some(ConnectionStatus::Connected),
        user_id_prefix: None,
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b.store.list(&filter, after.as_ref(), 5).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 5);
        after = Some(ListCursor::of(page.last().unwrap()));
        seen.extend(page);
    }
    assert_eq!(seen.len(), 13);
    let key = |c: &ConnectionRecord| (c.user_id.as_str().to_owned(), c.integration.clone());
    assert!(
        seen.windows(2).all(|w| key(&w[0]) < key(&w[1])),
        "ordered by (user id, integration)"
    );
    assert!(seen.iter().all(|c| c.integration.as_str() == "spotify"));
    let none = ListFilter {
        status: Some(ConnectionStatus::Expired),
        ..ListFilter::default()
    };
    assert!(b.store.list(&none, None, 100).await.unwrap().is_empty());
    assert_eq!(
        b.store
            .list(&ListFilter::default(), None, 100)
            .await
            .unwrap()
            .len(),
        26
    );
}

async fn compare_and_swap_detects_conflicts(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let record = b
        .store
        .upsert(new_connection(&env, "u", "discord", "AT-x", Some("RT-x"), None).await)
        .await
        .unwrap();
    let mut update = record.to_update(now());
    update.last_refreshed_at = Some(now());
    let updated = b
        .store
        .update(record.id, record.version, &update)
        .await
        .unwrap();
    assert_eq!(updated.version, record.version + 1);
    assert_eq!(updated.last_refreshed_at, update.last_refreshed_at);

    let stale = b
        .store
        .update(record.id, record.version, &update)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StoreError::Conflict { id, expected } if id == record.id && expected == record.version),
        "{stale}"
    );
    let gone = b
        .store
        .update(ConnectionId::new(), 1, &update)
        .await
        .unwrap_err();
    assert!(matches!(gone, StoreError::NotFound), "{gone}");
}

async fn concurrent_writers_exactly_one_wins(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    for round in 0..20 {
        let record = b
            .store
            .upsert(
                new_connection(
                    &env,
                    &format!("u{round}"),
                    "spotify",
                    "AT-x",
                    Some("RT-x"),
                    None,
                )
                .await,
            )
            .await
            .unwrap();
        let writers = (0..2).map(|writer| {
            let store = Arc::clone(&b.store);
            let record = record.clone();
            tokio::spawn(async move {
                let mut update = record.to_update(now());
                update.metadata = serde_json::json!({ "writer": writer });
                store.update(record.id, record.version, &update).await
            })
        });
        let results: Vec<_> = futures::future::join_all(writers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
            .count();
        assert_eq!((wins, conflicts), (1, 1), "round {round}: {results:?}");
        let winner = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
        let stored = b.store.get_by_id(record.id).await.unwrap().unwrap();
        assert_eq!(stored.metadata, winner.metadata);
        assert_eq!(stored.version, record.version + 1);
    }
}

async fn claim_due_takes_only_due_unleased_refreshable_rows(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let due_early = b
        .store
        .upsert(
            new_connection(
                &env,
                "a",
                "spotify",
                "AT",
                Some("RT"),
                Some(now - Duration::minutes(10)),
            )
            .await,
        )
        .await
        .unwrap();
    let due_late = b
        .store
        .upsert(
            new_connection(
                &env,
                "b",
                "spotify",
                "AT",
                Some("RT"),
                Some(now - Duration::minutes(1)),
            )
            .await,
        )
        .await
        .unwrap();
    b.store
        .upsert(
            new_connection(
                &env,
                "c",
                "spotify",
                "AT",
                Some("RT"),
                Some(now + Duration::minutes(5)),
            )
            .await,
        )
        .await
        .unwrap();
    b.store
        .upsert(new_connection(&env, "d", "github", "AT", None, None).await)
        .await
        .unwrap();
    let reauth = b
        .store
        .upsert(
            new_connection(
                &env,
                "e",
                "spotify",
                "AT",
                Some("RT"),
                Some(now - Duration::minutes(20)),
            )
            .await,
        )
        .await
        .unwrap();
    let mut update = reauth.to_update(now);
    update.status = ConnectionStatus::NeedsReauth;
    b.store
        .update(reauth.id, reauth.version, &update)
        .await
        .unwrap();

    assert_eq!(b.store.count_due_before(now).await.unwrap(), 2);
    let lease_until = now + Duration::seconds(30);
    let claimed = b
        .store
        .claim_due(now, 10, "node-a", now, lease_until)
        .await
        .unwrap();
    let ids: Vec<_> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&due_early.id) && ids.contains(&due_late.id));
    for record in &claimed {
        assert_eq!(
            record.lease,
            Some(Lease {
                owner: "node-a".into(),
                expires_at: lease_until
            })
        );
        assert_eq!(record.version, 2, "a claim is a write");
    }
    // Held leases are skipped; a limit takes the most overdue first.
    assert!(
        b.store
            .claim_due(now, 10, "node-b", now, lease_until)
            .await
            .unwrap()
            .is_empty()
    );
    let later = lease_until + Duration::seconds(1);
    assert!(
        b.store
            .claim_due(later, 1, "node-b", now, later + Duration::seconds(30))
            .await
            .unwrap()
            .is_empty(),
        "expired leases are not taken over before takeover_before"
    );
    let reclaimed = b
        .store
        .claim_due(later, 1, "node-b", later, later + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(
        reclaimed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![due_early.id],
        "expired lease is reclaimable, oldest first"
    );
}

async fn concurrent_claims_never_overlap(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let mut all = HashSet::new();
    for i in 0..200 {
        let c = new_connection(
            &env,
            &format!("u{i}"),
            "spotify",
            "AT",
            Some("RT"),
            Some(now - Duration::seconds(i)),
        )
        .await;
        all.insert(b.store.upsert(c).await.unwrap().id);
    }
    let claimers = (0..4).map(|n| {
        let store = Arc::clone(&b.store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due(
                        now,
                        7,
                        &format!("node-{n}"),
                        now,
                        now + Duration::minutes(1),
                    )
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break mine;
                }
                mine.extend(batch.into_iter().map(|c| c.id));
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

async fn leases_belong_to_their_owner(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    let record = b
        .store
        .upsert(new_connection(&env, "u", "spotify", "AT", Some("RT"), None).await)
        .await
        .unwrap();
    let until = now + Duration::seconds(20);
    let held = b
        .store
        .acquire_lease(record.id, "a", record.version, now, until)
        .await
        .unwrap()
        .unwrap();
    assert!(held.lease_allows("a", now) && !held.lease_allows("b", now));
    assert_eq!(
        held.version,
        record.version + 1,
        "taking a lease is a write"
    );
    assert!(
        b.store
            .acquire_lease(record.id, "b", held.version, now, until)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !b.store.release_lease(record.id, "b").await.unwrap(),
        "only the owner releases"
    );
    let again = b
        .store
        .acquire_lease(record.id, "a", held.version, now, until)
        .await
        .unwrap()
        .expect("re-entrant for its owner");
    assert!(
        b.store
            .acquire_lease(record.id, "a", held.version, now, until)
            .await
            .unwrap()
            .is_none(),
        "a lease is only taken on the row as the caller read it"
    );
    assert!(
        b.store
            .acquire_lease(record.id, "b", again.version, now, until)
            .await
            .unwrap()
            .is_none(),
        "an expired lease is not taken over before takeover_before"
    );
    let taken = b
        .store
        .acquire_lease(
            record.id,
            "b",
            again.version,
            until,
            until + Duration::seconds(20),
        )
        .await
        .unwrap()
        .expect("expired lease is taken over");
    assert!(
        !b.store
            .renew_lease(record.id, "a", again.version, until + Duration::seconds(60))
            .await
            .unwrap(),
        "the lease a was taken over: a cannot renew it"
    );
    assert!(
        !b.store.release_lease(record.id, "a").await.unwrap(),
        "a's lease was taken over"
    );
    assert!(
        b.store
            .renew_lease(record.id, "b", taken.version, until + Duration::seconds(60))
            .await
            .unwrap()
    );
    let renewed = b.store.get_by_id(record.id).await.unwrap().unwrap();
    assert_eq!(
        renewed.version, taken.version,
        "a renewal keeps the version"
    );
    assert_eq!(
        renewed.lease.unwrap().expires_at,
        until + Duration::seconds(60)
    );
    assert!(
        !b.store
            .renew_lease(record.id, "b", taken.version - 1, until)
            .await
            .unwrap(),
        "a renewal compares the version"
    );
    assert!(b.store.release_lease(record.id, "b").await.unwrap());
    assert!(
        b.store
            .get_by_id(record.id)
            .await
            .unwrap()
            .unwrap()
            .lease
            .is_none()
    );
}

/// The scheduler's in-flight leases, renewed for a tick in one statement:
/// each row answers for itself, exactly as [`ConnectionStore::renew_lease`]
/// would, and nothing but the lease's expiry changes.
async fn batched_renewals_compare_owner_and_version_per_row(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    for user in ["a", "b", "c", "d"] {
        b.store
            .upsert(new_connection(&env, user, "spotify", "AT", Some("RT"), Some(now)).await)
            .await
            .unwrap();
    }
    let until = now + Duration::seconds(30);
    let mut claimed = b
        .store
        .claim_due(now + Duration::seconds(1), 10, "me", now, until)
        .await
        .unwrap();
    claimed.sort_by(|x, y| x.user_id.as_str().cmp(y.user_id.as_str()));
    assert_eq!(claimed.len(), 4);
    // Row b moves on behind the holder's back; row c's lease is taken over
    // by another owner after it expired; row d is deleted.
    let moved = b
        .store
        .update(
            claimed[1].id,
            claimed[1].version,
            &claimed[1].to_update(now),
        )
        .await
        .unwrap();
    assert!(
        b.store
            .acquire_lease(
                claimed[2].id,
                "other",
                claimed[2].version,
                until,
                until + Duration::seconds(30)
            )
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        b.store
            .delete(&user("d"), &integration("spotify"))
            .await
            .unwrap()
    );
    let in_flight = now + Duration::seconds(300);
    let renewals: Vec<LeaseRenewal> = claimed
        .iter()
        .map(|record| LeaseRenewal {
            id: record.id,
            expected_version: record.version,
            lease_until: in_flight,
        })
        .collect();
    let renewed = b.store.renew_leases("me", &renewals).await.unwrap();
    assert_eq!(renewed, vec![true, false, false, false]);
    let a = b.store.get_by_id(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(a.version, claimed[0].version, "a renewal keeps the version");
    assert_eq!(a.access_token, claimed[0].access_token);
    let lease = a.lease.unwrap();
    assert_eq!((lease.owner.as_str(), lease.expires_at), ("me", in_flight));
    let b_row = b.store.get_by_id(claimed[1].id).await.unwrap().unwrap();
    assert_eq!(b_row.version, moved.version, "a moved row is left alone");
    assert_eq!(b_row.lease, moved.lease);
    let c = b.store.get_by_id(claimed[2].id).await.unwrap().unwrap();
    assert_eq!(
        c.lease.unwrap().owner,
        "other",
        "another owner's lease is untouched"
    );
    assert_eq!(
        b.store.renew_leases("me", &[]).await.unwrap(),
        Vec::<bool>::new()
    );
}

async fn delete_counts_and_purge(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    for i in 0..3 {
        b.store
            .upsert(new_connection(&env, &format!("u{i}"), "wix", "AT", None, None).await)
            .await
            .unwrap();
    }
    let old = b
        .store
        .get(&user("u0"), &integration("wix"))
        .await
        .unwrap()
        .unwrap();
    let mut update = old.to_update(now() - Duration::days(40));
    update.status = ConnectionStatus::Disconnected;
    update.access_token = None;
    b.store.update(old.id, old.version, &update).await.unwrap();

    let counts = b.store.count_by_status().await.unwrap();
    assert_eq!(counts[&ConnectionStatus::Connected], 2);
    assert_eq!(counts[&ConnectionStatus::Disconnected], 1);
    assert_eq!(counts[&ConnectionStatus::Expired], 0);

    assert_eq!(
        b.store
            .purge(
                &[ConnectionStatus::Disconnected],
                now() - Duration::days(30)
            )
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        b.store
            .purge(&[ConnectionStatus::Connected], now() - Duration::days(30))
            .await
            .unwrap(),
        0
    );
    assert!(
        b.store
            .delete(&user("u1"), &integration("wix"))
            .await
            .unwrap()
    );
    assert!(
        !b.store
            .delete(&user("u1"), &integration("wix"))
            .await
            .unwrap()
    );
    assert_eq!(
        b.store.count_by_status().await.unwrap()[&ConnectionStatus::Connected],
        1
    );
}

async fn rotation_listing_and_rewrap(b: Backend) {
    let old = envelope(&key_spec("k1", 1));
    for i in 0..12 {
        b.store
            .upsert(
                new_connection(
                    &old,
                    &format!("u{i}"),
                    "tidal",
                    "AT-rotate-me-0001",
                    None,
                    None,
                )
                .await,
            )
            .await
            .unwrap();
    }
    let both = envelope(&format!("{},{}", key_spec("k2", 2), key_spec("k1", 1)));
    b.store
        .upsert(new_connection(&both, "fresh", "tidal", "AT", None, None).await)
        .await
        .unwrap();
    assert_eq!(
        b.store
            .count_by_key()
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![("k1".into(), 12), ("k2".into(), 1)]
    );

    let first = b.store.list_keys_to_rotate("k2", None, 5).await.unwrap();
    assert_eq!(first.len(), 5);
    let rest = b
        .store
        .list_keys_to_rotate("k2", Some(first.last().unwrap().0), 100)
        .await
        .unwrap();
    assert_eq!(rest.len(), 7);
    let (id, wrapped) = &first[0];
    let new = both.rewrap(*id, wrapped).await.unwrap();
    assert!(
        b.store
            .replace_wrapped_key(*id, wrapped, &new)
            .await
            .unwrap()
    );
    assert!(
        !b.store
            .replace_wrapped_key(*id, wrapped, &new)
            .await
            .unwrap(),
        "only swaps from the expected key"
    );
    let row = b.store.get_by_id(*id).await.unwrap().unwrap();
    assert_eq!(row.data_key.key_id().as_str(), "k2");
    assert_eq!(row.version, 1, "re-wrapping is not a token write");
    let (access, _) = envelope(&key_spec("k2", 2))
        .open(
            *id,
            &row.data_key,
            row.access_token.as_deref().unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(access.expose(), "AT-rotate-me-0001");
}

async fn migrations_are_idempotent_and_newer_schema_is_refused(b: Backend) {
    b.store.migrate().await.unwrap();
    // Pretend a newer release applied a migration this build does not know.
    let pool_url = b.url.clone();
    let store = tokenvault::store::connect(&pool_url, &Default::default())
        .await
        .unwrap();
    insert_future_migration(&pool_url).await;
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NewerSchema {
                version: 29991231000000
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer tokenvault"), "{err}");
}

fn event(event_type: &str, created_at: DateTime<Utc>) -> OutboxEvent {
    let id = Uuid::now_v7();
    OutboxEvent {
        id,
        event_type: event_type.to_owned(),
        payload: format!(r#"{{"id":"{id}","type":"{event_type}"}}"#),
        created_at,
    }
}

fn event_ids(events: &[tokenvault::store::PendingEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// The upsert alone knows whether it inserted or replaced a row, so it
/// picks which events to write: `emit` for a first connection,
/// `emit_on_replace` for a reconnect, never both.
async fn a_replacing_upsert_writes_its_replace_events(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let now = now();
    for (access, expected) in [
        ("AT-first-000000001", "connection.created"),
        ("AT-second-00000002", "connection.reconnected"),
    ] {
        let mut grant = new_connection(&env, "u", "google", access, None, None).await;
        grant.emit = vec![event("connection.created", now)];
        grant.emit_on_replace = vec![event("connection.reconnected", now)];
        b.store.upsert(grant).await.unwrap();
        let claimed = b
            .store
            .claim_events(now, 10, "worker", now + Duration::seconds(30))
            .await
            .unwrap();
        let types: Vec<&str> = claimed.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, [expected]);
    }
}

async fn outbox_claims_oldest_first_and_honours_leases(b: Backend) {
    let now = now();
    let oldest = event("connection.created", now - Duration::seconds(3));
    let middle = event("connection.refreshed", now - Duration::seconds(2));
    let newest = event("connection.error", now - Duration::seconds(1));
    let future = event("connection.created", now + Duration::minutes(10));
    // Inserted out of order: claims follow time, not insertion.
    b.store
        .enqueue_events(&[newest.clone(), oldest.clone(), future.clone()])
        .await
        .unwrap();
    b.store
        .enqueue_events(std::slice::from_ref(&middle))
        .await
        .unwrap();
    b.store.enqueue_events(&[]).await.unwrap();
    assert_eq!(b.store.count_pending_events().await.unwrap(), 4);

    let a_until = now + Duration::seconds(30);
    let first = b
        .store
        .claim_events(now, 2, "worker-a", a_until)
        .await
        .unwrap();
    assert_eq!(
        event_ids(&first),
        vec![oldest.id, middle.id],
        "oldest first"
    );
    for (claimed, sent) in first.iter().zip([&oldest, &middle]) {
        assert_eq!(claimed.event_type, sent.event_type);
        assert_eq!(claimed.payload, sent.payload);
        assert_eq!(claimed.created_at, sent.created_at);
        assert_eq!(claimed.attempts, 0);
    }

    // Held events are skipped; events not yet due are not claimed.
    let b_until = now + Duration::seconds(60);
    let second = b
        .store
        .claim_events(now, 10, "worker-b", b_until)
        .await
        .unwrap();
    assert_eq!(event_ids(&second), vec![newest.id]);
    assert!(
        b.store
            .claim_events(now, 10, "worker-c", b_until)
            .await
            .unwrap()
            .is_empty()
    );
    let just_before = a_until - Duration::milliseconds(1);
    assert!(
        b.store
            .claim_events(just_before, 10, "worker-c", b_until)
            .await
            .unwrap()
            .is_empty(),
        "a lease holds until it expires"
    );
    assert_eq!(
        b.store.count_pending_events().await.unwrap(),
        4,
        "claimed is still pending"
    );

    // Once worker-a's lease expires its events go to whoever claims next.
    let taken = b
        .store
        .claim_events(a_until, 10, "worker-c", a_until + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(event_ids(&taken), vec![oldest.id, middle.id]);
    assert!(
        !b.store
            .event_delivered(oldest.id, "worker-a", a_until)
            .await
            .unwrap(),
        "worker-a lost its lease"
    );
    assert!(
        b.store
            .event_delivered(oldest.id, "worker-c", a_until)
            .await
            .unwrap()
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 3);

    // The future event becomes due at its creation time.
    let due = b
        .store
        .claim_events(
            future.created_at,
            10,
            "worker-d",
            future.created_at + Duration::seconds(30),
        )
        .await
        .unwrap();
    assert_eq!(event_ids(&due), vec![middle.id, newest.id, future.id]);
}

async fn delivered_events_leave_the_outbox(b: Backend) {
    let now = now();
    let first = event("connection.created", now - Duration::seconds(2));
    let second = event("connection.deleted", now - Duration::seconds(1));
    b.store
        .enqueue_events(&[first.clone(), second.clone()])
        .await
        .unwrap();
    let until = now + Duration::seconds(30);
    let claimed = b
        .store
        .claim_events(now, 10, "worker-a", until)
        .await
        .unwrap();
    assert_eq!(event_ids(&claimed), vec![first.id, second.id]);

    // A worker that does not hold the lease cannot complete the event.
    assert!(
        !b.store
            .event_delivered(first.id, "worker-b", now)
            .await
            .unwrap(),
        "only the lease owner marks delivery"
    );
    assert!(
        !b.store
            .event_delivered(Uuid::now_v7(), "worker-a", now)
            .await
            .unwrap(),
        "unknown event"
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 2);
    assert!(
        b.store
            .claim_events(now, 10, "worker-b", until)
            .await
            .unwrap()
            .is_empty(),
        "worker-a still holds both"
    );

    assert!(
        b.store
            .event_delivered(first.id, "worker-a", now)
            .await
            .unwrap()
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 1);
    assert!(
        !b.store
            .event_delivered(first.id, "worker-a", now)
            .await
            .unwrap(),
        "delivery is recorded once"
    );

    // Long after every lease: only the undelivered event comes back, and
    // worker-b's failed attempt to complete it did not count.
    let later = now + Duration::hours(1);
    let again = b
        .store
        .claim_events(later, 10, "worker-b", later + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(event_ids(&again), vec![second.id]);
    assert_eq!(again[0].attempts, 0);
    assert!(
        b.store
            .event_delivered(second.id, "worker-b", later)
            .await
            .unwrap()
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 0);
    let much_later = now + Duration::days(30);
    assert!(
        b.store
            .claim_events(
                much_later,
                10,
                "worker-c",
                much_later + Duration::seconds(30)
            )
            .await
            .unwrap()
            .is_empty(),
        "delivered events are never claimed again"
    );
}

async fn failed_events_retry_at_retry_at_or_are_abandoned(b: Backend) {
    let now = now();
    let retried = event("connection.refreshed", now - Duration::seconds(2));
    let abandoned = event("connection.error", now - Duration::seconds(1));
    b.store
        .enqueue_events(&[retried.clone(), abandoned.clone()])
        .await
        .unwrap();
    let claimed = b
        .store
        .claim_events(now, 10, "worker-a", now + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(event_ids(&claimed), vec![retried.id, abandoned.id]);
    assert!(claimed.iter().all(|e| e.attempts == 0));

    let retry_at = now + Duration::minutes(5);
    assert!(
        !b.store
            .event_failed(retried.id, "worker-b", Some(retry_at), "HTTP 500", now)
            .await
            .unwrap(),
        "only the lease owner records a failure"
    );
    assert!(
        b.store
            .event_failed(retried.id, "worker-a", Some(retry_at), "HTTP 500", now)
            .await
            .unwrap()
    );
    assert!(
        b.store
            .event_failed(abandoned.id, "worker-a", None, "HTTP 410", now)
            .await
            .unwrap()
    );
    assert_eq!(
        b.store.count_pending_events().await.unwrap(),
        1,
        "an abandoned event is no longer pending"
    );

    // Failing releases the lease, but the retry waits for retry_at.
    assert!(
        b.store
            .claim_events(now, 10, "worker-b", now + Duration::seconds(30))
            .await
            .unwrap()
            .is_empty()
    );
    let just_before = retry_at - Duration::milliseconds(1);
    assert!(
        b.store
            .claim_events(
                just_before,
                10,
                "worker-b",
                retry_at + Duration::seconds(30)
            )
            .await
            .unwrap()
            .is_empty(),
        "not claimable before retry_at"
    );
    let second_try = b
        .store
        .claim_events(retry_at, 10, "worker-b", retry_at + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(event_ids(&second_try), vec![retried.id]);
    assert_eq!(second_try[0].attempts, 1, "the failed attempt counted");
    assert_eq!(second_try[0].payload, retried.payload);
    assert_eq!(second_try[0].created_at, retried.created_at);

    let retry_again = retry_at + Duration::minutes(10);
    assert!(
        b.store
            .event_failed(
                retried.id,
                "worker-b",
                Some(retry_again),
                "timeout",
                retry_at
            )
            .await
            .unwrap()
    );
    let third_try = b
        .store
        .claim_events(
            retry_again,
            10,
            "worker-c",
            retry_again + Duration::seconds(30),
        )
        .await
        .unwrap();
    assert_eq!(event_ids(&third_try), vec![retried.id]);
    assert_eq!(third_try[0].attempts, 2);
    // Giving up on the last attempt abandons it too.
    assert!(
        b.store
            .event_failed(retried.id, "worker-c", None, "HTTP 500", retry_again)
            .await
            .unwrap()
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 0);
    let much_later = now + Duration::days(30);
    assert!(
        b.store
            .claim_events(
                much_later,
                10,
                "worker-d",
                much_later + Duration::seconds(30)
            )
            .await
            .unwrap()
            .is_empty(),
        "abandoned events are never claimed again"
    );
}

async fn concurrent_event_claims_never_overlap(b: Backend) {
    let now = now();
    let events: Vec<_> = (0..100)
        .map(|i| event("connection.refreshed", now - Duration::milliseconds(i)))
        .collect();
    b.store.enqueue_events(&events).await.unwrap();
    let all: HashSet<_> = events.iter().map(|e| e.id).collect();
    let claimers = (0..2).map(|n| {
        let store = Arc::clone(&b.store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_events(now, 7, &format!("worker-{n}"), now + Duration::minutes(1))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    break mine;
                }
                mine.extend(batch.into_iter().map(|e| e.id));
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

async fn connection_writes_emit_events_in_the_same_transaction(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let mut new = new_connection(&env, "u", "spotify", "AT", Some("RT"), None).await;
    let created = event("connection.created", new.now);
    new.emit = vec![created.clone()];
    let record = b.store.upsert(new).await.unwrap();
    assert_eq!(b.store.count_pending_events().await.unwrap(), 1);

    let refreshed = event("connection.refreshed", now());
    let errored = event("connection.error", now());
    let mut update = record.to_update(now());
    update.refresh_attempts = 1;
    update.emit = vec![refreshed.clone(), errored.clone()];
    let updated = b
        .store
        .update(record.id, record.version, &update)
        .await
        .unwrap();
    assert_eq!(updated.version, record.version + 1);
    assert_eq!(b.store.count_pending_events().await.unwrap(), 3);

    // A lost compare-and-swap writes nothing, events included.
    let lost = event("connection.refreshed", now());
    let mut stale = record.to_update(now());
    stale.emit = vec![lost.clone()];
    let err = b
        .store
        .update(record.id, record.version, &stale)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(b.store.count_pending_events().await.unwrap(), 3);
    let err = b
        .store
        .update(ConnectionId::new(), 1, &stale)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound), "{err}");
    assert_eq!(b.store.count_pending_events().await.unwrap(), 3);
    let stored = b.store.get_by_id(record.id).await.unwrap().unwrap();
    assert_eq!(stored.version, updated.version);
    assert_eq!(stored.refresh_attempts, 1);

    let later = now() + Duration::minutes(1);
    let claimed = b
        .store
        .claim_events(later, 10, "worker", later + Duration::seconds(30))
        .await
        .unwrap();
    let ids: HashSet<_> = claimed.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        HashSet::from([created.id, refreshed.id, errored.id]),
        "the stale update's event was rolled back"
    );
    let emitted = claimed.iter().find(|e| e.id == created.id).unwrap();
    assert_eq!(emitted.event_type, created.event_type);
    assert_eq!(emitted.payload, created.payload);
    assert_eq!(emitted.created_at, created.created_at);
}

async fn misconfigured_is_marked_once_per_fingerprint(b: Backend) {
    let since = now() - Duration::minutes(3);
    let first = MisconfiguredIntegration {
        integration: integration("spotify"),
        config_fingerprint: "fp-1".into(),
        error: LastError {
            code: "invalid_client".into(),
            message: "client authentication failed".into(),
        },
        since,
    };
    let marked = event("integration.misconfigured", since);
    assert!(
        b.store
            .mark_misconfigured(&first, Some(&marked))
            .await
            .unwrap()
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 1);
    assert_eq!(
        b.store.list_misconfigured().await.unwrap(),
        vec![first.clone()]
    );

    // The same configuration failing again is not news.
    let repeat = MisconfiguredIntegration {
        error: LastError {
            code: "unauthorized_client".into(),
            message: "again".into(),
        },
        since: since + Duration::minutes(1),
        ..first.clone()
    };
    let repeat_event = event("integration.misconfigured", repeat.since);
    assert!(
        !b.store
            .mark_misconfigured(&repeat, Some(&repeat_event))
            .await
            .unwrap()
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 1);
    assert_eq!(
        b.store.list_misconfigured().await.unwrap(),
        vec![first.clone()],
        "the first marking is kept"
    );

    // A changed configuration that fails too is marked anew.
    let changed = MisconfiguredIntegration {
        config_fingerprint: "fp-2".into(),
        since: since + Duration::minutes(2),
        ..repeat.clone()
    };
    let changed_event = event("integration.misconfigured", changed.since);
    assert!(
        b.store
            .mark_misconfigured(&changed, Some(&changed_event))
            .await
            .unwrap()
    );
    assert_eq!(b.store.count_pending_events().await.unwrap(), 2);
    let other = MisconfiguredIntegration {
        integration: integration("github"),
        config_fingerprint: "fp-gh".into(),
        error: LastError {
            code: "invalid_client".into(),
            message: "bad secret".into(),
        },
        since,
    };
    assert!(b.store.mark_misconfigured(&other, None).await.unwrap());
    assert_eq!(
        b.store.count_pending_events().await.unwrap(),
        2,
        "no event given, none written"
    );
    assert_eq!(
        b.store.list_misconfigured().await.unwrap(),
        vec![other.clone(), changed.clone()]
    );

    assert!(
        b.store
            .clear_misconfigured(&integration("spotify"))
            .await
            .unwrap()
    );
    assert!(
        !b.store
            .clear_misconfigured(&integration("spotify"))
            .await
            .unwrap()
    );
    assert_eq!(b.store.list_misconfigured().await.unwrap(), vec![other]);
    // Once cleared, the same fingerprint failing again is news again.
    assert!(b.store.mark_misconfigured(&changed, None).await.unwrap());

    let later = now() + Duration::minutes(1);
    let claimed = b
        .store
        .claim_events(later, 10, "worker", later + Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(event_ids(&claimed), vec![marked.id, changed_event.id]);
}

async fn failing_since_round_trips_through_update(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let record = b
        .store
        .upsert(new_connection(&env, "u", "spotify", "AT", Some("RT"), None).await)
        .await
        .unwrap();
    assert_eq!(record.failing_since, None);

    let since = now() - Duration::hours(3);
    let mut update = record.to_update(now());
    update.failing_since = Some(since);
    let failing = b
        .store
        .update(record.id, record.version, &update)
        .await
        .unwrap();
    assert_eq!(failing.failing_since, Some(since));
    assert_eq!(
        b.store
            .get_by_id(record.id)
            .await
            .unwrap()
            .unwrap()
            .failing_since,
        Some(since)
    );

    let mut update = failing.to_update(now());
    assert_eq!(update.failing_since, Some(since), "to_update carries it");
    update.failing_since = None;
    let recovered = b
        .store
        .update(failing.id, failing.version, &update)
        .await
        .unwrap();
    assert_eq!(recovered.failing_since, None);
    assert_eq!(
        b.store
            .get_by_id(record.id)
            .await
            .unwrap()
            .unwrap()
            .failing_since,
        None
    );
}

async fn insert_future_migration(url: &str) {
    use sqlx::Connection;
    const COLUMNS: &str = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (29991231000000, 'future', TRUE, ";
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(const_format(COLUMNS, "X'00', 1)"))
            .execute(&mut conn)
            .await
            .unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(const_format(COLUMNS, "'\\x00'::bytea, 1)"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

fn const_format(head: &str, tail: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("{head}{tail}"))
}

mod vault {
    use super::common::*;
    use std::sync::Arc;
    use tokenvault::domain::{AccessToken, RefreshToken, Scopes, SystemClock, TokenSet, TokenType};
    use tokenvault::vault::Vault;

    async fn save_and_read_round_trip(b: Backend) {
        let vault = Vault::new(
            Arc::clone(&b.store),
            envelope(&key_spec("k1", 1)),
            Arc::new(SystemClock),
        );
        let tokens = TokenSet {
            access_token: AccessToken::new("AT-vault-round-trip"),
            refresh_token: Some(RefreshToken::new("RT-vault-round-trip")),
            token_type: TokenType::Bearer,
            scopes: Scopes::parse("a b", " "),
            expires_at: Some(now() + chrono::Duration::hours(1)),
        };
        let record = vault
            .save_grant(
                &user("u"),
                &integration("spotify"),
                &tokens,
                serde_json::json!({"k": 1}),
                chrono::Duration::minutes(5),
            )
            .await
            .unwrap();
        assert_eq!(
            record.next_refresh_at,
            Some(tokens.expires_at.unwrap() - chrono::Duration::minutes(5))
        );
        let (read_record, read_tokens) = vault
            .read(&user("u"), &integration("spotify"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_record.id, record.id);
        assert_eq!(read_tokens, tokens);
        assert!(
            vault
                .read(&user("nobody"), &integration("spotify"))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn sqlite_save_and_read_round_trip() {
        save_and_read_round_trip(sqlite().await).await
    }

    #[tokio::test]
    async fn postgres_save_and_read_round_trip() {
        save_and_read_round_trip(postgres().await).await
    }
}

async fn update_batch_compares_and_swaps_each_row(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let mut records = Vec::new();
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        let new = new_connection(
            &env,
            user,
            "spotify",
            &format!("AT-{i}"),
            Some(&format!("RT-{i}")),
            Some(now()),
        )
        .await;
        records.push(b.store.upsert(new).await.unwrap());
    }
    // The scheduler's lease on every row, as a claim leaves it.
    let lease_until = now() + Duration::seconds(30);
    let claimed = b
        .store
        .claim_due(now() + Duration::seconds(1), 10, "me", now(), lease_until)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let current = |i: usize| {
        claimed
            .iter()
            .find(|r| r.id == records[i].id)
            .unwrap()
            .clone()
    };
    // Row 1 moves on behind the batch's back: its entry must lose.
    let moved = b
        .store
        .update(
            current(1).id,
            current(1).version,
            &current(1).to_update(now()),
        )
        .await
        .unwrap();

    let refreshed = event("connection.refreshed", now());
    let lost = event("connection.refreshed", now());
    let entry = |record: &tokenvault::store::ConnectionRecord, n: u8| {
        let mut update = record.to_update(now());
        update.access_token = Some(vec![n; 40]);
        update.refresh_token = (n != 2).then(|| vec![n + 100; 40]);
        update.next_refresh_at = Some(now() + Duration::minutes(55));
        update.last_refreshed_at = Some(now());
        update.refresh_attempts = u32::from(n);
        update.last_error = (n == 2).then(|| LastError {
            code: "x".into(),
            message: "y".into(),
        });
        update.lease = None;
        BatchUpdate {
            id: record.id,
            expected_version: record.version,
            update,
        }
    };
    let mut batch = vec![
        entry(&current(0), 1),
        entry(&current(1), 9),
        entry(&current(2), 2),
    ];
    batch[0].update.emit = vec![refreshed.clone()];
    batch[1].update.emit = vec![lost.clone()];
    let mut gone = entry(&current(0), 7);
    gone.id = ConnectionId::new();
    batch.push(gone);
    let pending_before = b.store.count_pending_events().await.unwrap();

    let answers = b.store.update_batch(&batch).await.unwrap();
    assert_eq!(answers.len(), 4);
    assert_eq!(*answers[0].as_ref().unwrap(), current(0).version + 1);
    assert!(
        matches!(&answers[1], Err(StoreError::Conflict { id, expected }) if *id == records[1].id && *expected == current(1).version),
        "{:?}",
        answers[1]
    );
    assert_eq!(*answers[2].as_ref().unwrap(), current(2).version + 1);
    assert!(
        matches!(answers[3], Err(StoreError::NotFound)),
        "{:?}",
        answers[3]
    );

    for (i, n) in [(0usize, 1u8), (2, 2)] {
        let stored = b.store.get_by_id(records[i].id).await.unwrap().unwrap();
        assert_eq!(stored.version, current(i).version + 1);
        assert_eq!(stored.access_token, Some(vec![n; 40]));
        assert_eq!(stored.refresh_token, (n != 2).then(|| vec![n + 100; 40]));
        assert_eq!(stored.refresh_attempts, u32::from(n));
        assert_eq!(stored.lease, None, "the write-back releases the lease");
        assert_eq!(
            stored.next_refresh_at.map(|t| t.timestamp_millis()),
            batch[if i == 0 { 0 } else { 2 }]
                .update
                .next_refresh_at
                .map(|t| t.timestamp_millis())
        );
        assert_eq!(stored.last_error.is_some(), n == 2);
        assert_eq!(stored.user_id, records[i].user_id);
        assert_eq!(stored.metadata, records[i].metadata);
    }
    let untouched = b.store.get_by_id(records[1].id).await.unwrap().unwrap();
    assert_eq!(untouched.version, moved.version);
    assert_eq!(untouched.access_token, moved.access_token);
    // Only the written row's event was stored.
    assert_eq!(
        b.store.count_pending_events().await.unwrap(),
        pending_before + 1
    );
    assert!(b.store.update_batch(&[]).await.unwrap().is_empty());

    // A few hundred rows in one call (larger than one network packet).
    let mut many = Vec::new();
    for i in 0..300 {
        let new = new_connection(
            &env,
            &format!("many-{i}"),
            "spotify",
            "AT",
            Some("RT"),
            None,
        )
        .await;
        let record = b.store.upsert(new).await.unwrap();
        let mut update = record.to_update(now());
        update.access_token = Some(vec![(i % 250) as u8; 200]);
        many.push(BatchUpdate {
            id: record.id,
            expected_version: record.version,
            update,
        });
    }
    let answers = b.store.update_batch(&many).await.unwrap();
    assert!(answers.iter().all(Result::is_ok));
    for entry in many.iter().step_by(37) {
        let stored = b.store.get_by_id(entry.id).await.unwrap().unwrap();
        assert_eq!(stored.access_token, entry.update.access_token);
        assert_eq!(stored.version, entry.expected_version + 1);
    }
}

/// Every page of `filter` in pages of `size`.
async fn list_all(b: &Backend, filter: &ListFilter, size: u32) -> Vec<ConnectionRecord> {
    let mut seen = Vec::new();
    let mut after: Option<ListCursor> = None;
    loop {
        let page = b.store.list(filter, after.as_ref(), size).await.unwrap();
        assert!(page.len() <= size as usize);
        let Some(last) = page.last() else { break };
        after = Some(ListCursor::of(last));
        seen.extend(page);
    }
    seen
}

async fn set_status(b: &Backend, user_id: &str, key: &str, status: ConnectionStatus) {
    let record = b
        .store
        .get(&user(user_id), &integration(key))
        .await
        .unwrap()
        .unwrap();
    let mut update = record.to_update(now());
    update.status = status;
    if status == ConnectionStatus::Error {
        update.failing_since = Some(now());
    }
    b.store
        .update(record.id, record.version, &update)
        .await
        .unwrap();
}

async fn listing_filters_page_in_user_order(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    // Ids chosen so byte order differs from what a linguistic collation
    // gives (upper case, punctuation) and prefixes nest.
    let users = [
        "a",
        "a.b",
        "a:1",
        "a:10",
        "a:2",
        "A:1",
        "ab",
        "b",
        "team-a:1",
        "team-a:2",
        "team-ab:1",
        "team_a:1",
        "z",
    ];
    for (i, user_id) in users.iter().enumerate() {
        for key in ["github", "spotify"] {
            b.store
                .upsert(new_connection(&env, user_id, key, "AT", Some("RT"), None).await)
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            set_status(&b, user_id, "spotify", ConnectionStatus::NeedsReauth).await;
        }
    }
    let pairs = |rows: &[ConnectionRecord]| {
        rows.iter()
            .map(|c| format!("{}/{}", c.user_id, c.integration))
            .collect::<Vec<_>>()
    };
    let mut expected: Vec<String> = users
        .iter()
        .flat_map(|u| [format!("{u}/github"), format!("{u}/spotify")])
        .collect();
    expected.sort_by(|x, y| {
        let split = |s: &str| {
            let (u, i) = s.rsplit_once('/').unwrap();
            (u.as_bytes().to_vec(), i.as_bytes().to_vec())
        };
        split(x).cmp(&split(y))
    });
    for size in [1, 3, 100] {
        let all = list_all(&b, &ListFilter::default(), size).await;
        assert_eq!(pairs(&all), expected, "byte order, page size {size}");
    }

    let dead = ListFilter {
        status: Some(ConnectionStatus::NeedsReauth),
        ..ListFilter::default()
    };
    let listed = list_all(&b, &dead, 2).await;
    let want: Vec<String> = expected
        .iter()
        .filter(|pair| {
            let (u, i) = pair.rsplit_once('/').unwrap();
            i == "spotify" && users.iter().position(|x| *x == u).unwrap() % 3 == 0
        })
        .cloned()
        .collect();
    assert_eq!(pairs(&listed), want);

    let github = ListFilter {
        integration: Some(integration("github")),
        ..ListFilter::default()
    };
    assert_eq!(list_all(&b, &github, 4).await.len(), users.len());
    let github_dead = ListFilter {
        integration: Some(integration("github")),
        status: Some(ConnectionStatus::NeedsReauth),
        ..ListFilter::default()
    };
    assert!(list_all(&b, &github_dead, 4).await.is_empty());

    let prefixed = |prefix: &str| ListFilter {
        user_id_prefix: Some(prefix.to_owned()),
        ..ListFilter::default()
    };
    let users_of = |rows: Vec<ConnectionRecord>| {
        let mut ids: Vec<String> = rows.iter().map(|c| c.user_id.to_string()).collect();
        ids.dedup();
        ids
    };
    assert_eq!(
        users_of(list_all(&b, &prefixed("team-a"), 3).await),
        ["team-a:1", "team-a:2", "team-ab:1"]
    );
    assert_eq!(
        users_of(list_all(&b, &prefixed("team-a:"), 3).await),
        ["team-a:1", "team-a:2"]
    );
    assert_eq!(
        users_of(list_all(&b, &prefixed("a:1"), 3).await),
        ["a:1", "a:10"]
    );
    assert_eq!(users_of(list_all(&b, &prefixed("A"), 3).await), ["A:1"]);
    assert!(list_all(&b, &prefixed("zz"), 3).await.is_empty());

    // A cursor stays valid when its row is deleted meanwhile.
    let first = b.store.list(&ListFilter::default(), None, 3).await.unwrap();
    let cursor = ListCursor::of(first.last().unwrap());
    b.store
        .delete(&first[2].user_id, &first[2].integration)
        .await
        .unwrap();
    let rest = b
        .store
        .list(&ListFilter::default(), Some(&cursor), 1000)
        .await
        .unwrap();
    assert_eq!(pairs(&rest), expected[3..].to_vec());
}

async fn summary_counts_by_integration_and_status(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let soon = now() + Duration::minutes(30);
    let later = now() + Duration::hours(5);
    for i in 0..10 {
        let due = if i < 4 { soon } else { later };
        b.store
            .upsert(
                new_connection(
                    &env,
                    &format!("u{i}"),
                    "spotify",
                    "AT",
                    Some("RT"),
                    Some(due),
                )
                .await,
            )
            .await
            .unwrap();
    }
    for i in 0..3 {
        b.store
            .upsert(new_connection(&env, &format!("u{i}"), "github", "AT", None, None).await)
            .await
            .unwrap();
    }
    set_status(&b, "u0", "spotify", ConnectionStatus::Error).await;
    set_status(&b, "u5", "spotify", ConnectionStatus::NeedsReauth).await;
    set_status(&b, "u6", "spotify", ConnectionStatus::NeedsReauth).await;
    let rows = b.store.summary(now() + Duration::hours(1)).await.unwrap();
    let find = |key: &str, status: ConnectionStatus| {
        rows.iter()
            .find(|r| r.integration.as_str() == key && r.status == status)
            .map(|r| (r.count, r.failing, r.due))
    };
    assert_eq!(
        find("spotify", ConnectionStatus::Connected),
        Some((7, 0, 3))
    );
    assert_eq!(find("spotify", ConnectionStatus::Error), Some((1, 1, 1)));
    assert_eq!(
        find("spotify", ConnectionStatus::NeedsReauth),
        Some((2, 0, 0))
    );
    assert_eq!(find("github", ConnectionStatus::Connected), Some((3, 0, 0)));
    assert_eq!(rows.len(), 4, "{rows:?}");
    let keys: Vec<_> = rows.iter().map(|r| r.integration.as_str()).collect();
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "ordered by integration"
    );
}

async fn history_is_written_with_the_change_and_paged_newest_first(b: Backend) {
    let env = envelope(&key_spec("k1", 1));
    let (u, spotify) = (user("fan-1"), integration("spotify"));
    let start = now() - Duration::minutes(10);
    let at = |minutes: i64| start + Duration::minutes(minutes);
    let mut new = new_connection(&env, "fan-1", "spotify", "AT", Some("RT"), None).await;
    new.history = vec![HistoryEntry::new(
        HistoryKind::Created,
        new.id,
        &u,
        &spotify,
        ConnectionStatus::Connected,
        at(0),
    )];
    let first = b.store.upsert(new).await.unwrap();

    // A failed run, then a lost compare-and-swap whose entry must vanish.
    let error = LastError {
        code: "http_503".into(),
        message: "service unavailable".into(),
    };
    let mut update = first.to_update(at(1));
    update.refresh_attempts = 1;
    update.history = vec![
        HistoryEntry::about(
            HistoryKind::RefreshFailed,
            &first,
            ConnectionStatus::Connected,
            at(1),
        )
        .with_error(Some("transient"), &error),
    ];
    let failed = b
        .store
        .update(first.id, first.version, &update)
        .await
        .unwrap();
    let mut stale = first.to_update(at(2));
    stale.history = vec![HistoryEntry::about(
        HistoryKind::Revoked,
        &first,
        ConnectionStatus::Disconnected,
        at(2),
    )];
    assert!(matches!(
        b.store.update(first.id, first.version, &stale).await,
        Err(StoreError::Conflict { .. })
    ));

    // Another pair's history stays apart.
    let mut other = new_connection(&env, "fan-2", "spotify", "AT", None, None).await;
    other.history = vec![HistoryEntry::new(
        HistoryKind::Imported,
        other.id,
        &user("fan-2"),
        &spotify,
        ConnectionStatus::Connected,
        at(5),
    )];
    let other = b.store.upsert(other).await.unwrap();

    // Through a batch: only the row still at its version gets its entry.
    let mut recovered = failed.to_update(at(3));
    recovered.history = vec![HistoryEntry::about(
        HistoryKind::Recovered,
        &failed,
        ConnectionStatus::Connected,
        at(3),
    )];
    let mut lost = other.to_update(at(3));
    lost.history = vec![HistoryEntry::about(
        HistoryKind::Expired,
        &other,
        ConnectionStatus::Expired,
        at(3),
    )];
    let answers = b
        .store
        .update_batch(&[
            BatchUpdate {
                id: failed.id,
                expected_version: failed.version,
                update: recovered,
            },
            BatchUpdate {
                id: other.id,
                expected_version: other.version - 1,
                update: lost,
            },
        ])
        .await
        .unwrap();
    assert!(answers[0].is_ok() && answers[1].is_err(), "{answers:?}");

    // Connecting again continues the same history as `reconnected`.
    let mut again = new_connection(&env, "fan-1", "spotify", "AT2", Some("RT2"), None).await;
    again.history = vec![HistoryEntry::new(
        HistoryKind::Created,
        again.id,
        &u,
        &spotify,
        ConnectionStatus::Connected,
        at(4),
    )];
    let second = b.store.upsert(again).await.unwrap();

    let all = b.store.history(&u, &spotify, None, 100).await.unwrap();
    let kinds: Vec<_> = all.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            HistoryKind::Reconnected,
            HistoryKind::Recovered,
            HistoryKind::RefreshFailed,
            HistoryKind::Created
        ]
    );
    assert_eq!(all[0].connection_id, second.id);
    assert_eq!(all[3].connection_id, first.id);
    assert_eq!(all[2].error_class.as_deref(), Some("transient"));
    assert_eq!(all[2].error_code.as_deref(), Some("http_503"));
    assert_eq!(all[2].error_message.as_deref(), Some("service unavailable"));
    assert_eq!(all[2].at, at(1));
    assert_eq!(all[2].user_id, u);

    // Pages of one, including two entries in the same millisecond.
    let mut same_ms = second.to_update(at(6));
    same_ms.history = (0..2)
        .map(|_| {
            HistoryEntry::about(
                HistoryKind::RefreshForced,
                &second,
                ConnectionStatus::Connected,
                at(6),
            )
        })
        .collect();
    b.store
        .update(second.id, second.version, &same_ms)
        .await
        .unwrap();
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = b
            .store
            .history(&u, &spotify, before.as_ref(), 1)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.cursor());
        paged.extend(page);
    }
    assert_eq!(paged.len(), 6);
    let full = b.store.history(&u, &spotify, None, 100).await.unwrap();
    assert_eq!(paged, full);
    let others = b
        .store
        .history(&user("fan-2"), &spotify, None, 100)
        .await
        .unwrap();
    assert_eq!(
        others.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [HistoryKind::Imported],
        "the lost batch entry wrote nothing"
    );

    // Retention removes what is older than its cut-off, for every pair.
    assert_eq!(b.store.purge_history(at(4)).await.unwrap(), 3);
    assert_eq!(
        b.store
            .history(&user("fan-2"), &spotify, None, 100)
            .await
            .unwrap()
            .len(),
        1,
        "fan-2's entry is newer than the cut-off"
    );
    let kept = b.store.history(&u, &spotify, None, 100).await.unwrap();
    assert_eq!(kept.len(), 3);
    assert!(kept.iter().all(|e| e.at >= at(4)));
}
