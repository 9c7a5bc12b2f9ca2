//! Rotating the master key while the service reads: every row stays readable
//! during and after, the run can be interrupted and resumed, and the old key
//! can be retired only once nothing uses it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common;
use crate::common::*;
use tokenvault::rotation::{RotationError, check_retirable, rotate};

const ROWS: usize = 10_000;

macro_rules! on_both_backends {
    ($($test:ident),*) => {
        mod sqlite { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::common::sqlite().await).await })* }
        mod postgres { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::common::postgres().await).await })* }
    };
}

on_both_backends!(rotate_ten_thousand_rows_under_concurrent_readers);

async fn rotate_ten_thousand_rows_under_concurrent_readers(b: Backend) {
    let old = envelope(&key_spec("k1", 1));
    // Seal once per row (fresh data key each), insert with bounded parallelism.
    let inserts = futures::stream::iter(0..ROWS).map(|i| {
        let store = Arc::clone(&b.store);
        let old = old.clone();
        async move {
            let c = new_connection(
                &old,
                &format!("user-{i}"),
                "spotify",
                &format!("AT-row-{i:05}-secret"),
                Some("RT-x"),
                None,
            )
            .await;
            store.upsert(c).await.unwrap();
        }
    });
    use futures::StreamExt;
    inserts.buffer_unordered(16).collect::<Vec<_>>().await;

    // Operators put the new key first; the old one stays to unwrap.
    let both = envelope(&format!("{},{}", key_spec("k2", 2), key_spec("k1", 1)));
    let err = check_retirable(b.store.as_ref(), &both, "k1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RotationError::StillInUse { count, .. } if count == ROWS as u64),
        "{err}"
    );
    assert!(matches!(
        check_retirable(b.store.as_ref(), &both, "k2").await,
        Err(RotationError::RetireActive(_))
    ));

    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (store, env, done, reads) = (
                Arc::clone(&b.store),
                both.clone(),
                Arc::clone(&done),
                Arc::clone(&reads),
            );
            tokio::spawn(async move {
                let mut i = reader * 7919;
                while !done.load(Ordering::Relaxed) {
                    i = (i + 104_729) % ROWS;
                    let row = store
                        .get(&user(&format!("user-{i}")), &integration("spotify"))
                        .await
                        .unwrap()
                        .unwrap();
                    let (access, _) = env
                        .open(
                            row.id,
                            &row.data_key,
                            row.access_token.as_deref().unwrap(),
                            row.refresh_token.as_deref(),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("row {i} unreadable during rotation: {e}"));
                    assert_eq!(access.expose(), format!("AT-row-{i:05}-secret"));
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Interrupt a first run part-way, as a crash or Ctrl-C would.
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel();
    let interrupted = {
        let (store, env) = (Arc::clone(&b.store), both.clone());
        tokio::spawn(async move {
            rotate(store.as_ref(), &env, 500, |n| {
                let _ = progress_tx.send(n);
            })
            .await
        })
    };
    while let Some(processed) = progress_rx.recv().await {
        if processed >= 3_000 {
            break;
        }
    }
    interrupted.abort();
    let _ = interrupted.await;
    let partial = b.store.count_by_key().await.unwrap();
    assert!(
        partial.get("k2").copied().unwrap_or(0) >= 3_000,
        "{partial:?}"
    );
    assert!(
        partial.get("k1").copied().unwrap_or(0) > 0,
        "the first run was interrupted before the end: {partial:?}"
    );

    // The resumed run finishes the job.
    let report = rotate(b.store.as_ref(), &both, 500, |_| {}).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.remaining, 0);
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "readers ran during rotation"
    );

    let counts = b.store.count_by_key().await.unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![("k2".to_owned(), ROWS as u64)]
    );
    check_retirable(b.store.as_ref(), &both, "k1")
        .await
        .unwrap();

    // With k1 gone from the ring, every row still opens.
    let only_new = envelope(&key_spec("k2", 2));
    let mut after = None;
    let mut opened = 0;
    loop {
        let page = b
            .store
            .list(&Default::default(), after.as_ref(), 1000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(tokenvault::store::ListCursor::of(last));
        for row in &page {
            only_new
                .open(
                    row.id,
                    &row.data_key,
                    row.access_token.as_deref().unwrap(),
                    row.refresh_token.as_deref(),
                )
                .await
                .unwrap();
            opened += 1;
        }
    }
    assert_eq!(opened, ROWS);
}
