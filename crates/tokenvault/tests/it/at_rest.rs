//! What an attacker with the database (or a backup) sees: no token plaintext.

use crate::common::*;
use tokenvault::store::StoreError;

fn random_tokens() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (format!("AT-{id}"), format!("RT-{id}"))
}

fn assert_absent(haystack: &[u8], needle: &str, source: &str) {
    for form in [needle.as_bytes().to_vec(), hex::encode(needle).into_bytes()] {
        assert!(
            !haystack
                .windows(form.len())
                .any(|window| window == form.as_slice()),
            "{source} contains {}",
            String::from_utf8_lossy(&form)
        );
    }
}

#[tokio::test]
async fn sqlite_files_hold_no_token_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let url = tokenvault::testing::sqlite_url(dir.path());
    let store = tokenvault::store::connect(&url, &Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let env = envelope(&key_spec("k1", 1));
    let (access, refresh) = random_tokens();
    store
        .upsert(new_connection(&env, "u", "spotify", &access, Some(&refresh), None).await)
        .await
        .unwrap();
    let stored = store
        .get(&user("u"), &integration("spotify"))
        .await
        .unwrap()
        .unwrap();
    assert!(stored.access_token.is_some() && stored.refresh_token.is_some());
    drop(store);

    // The database file and its WAL/SHM companions, whatever state they are in.
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert_absent(&bytes, &access, &path.display().to_string());
        assert_absent(&bytes, &refresh, &path.display().to_string());
        checked += bytes.len();
    }
    assert!(checked > 0);
}

#[tokio::test]
async fn pg_dump_holds_no_token_plaintext() {
    let url = tokenvault::testing::fresh_postgres_url().await;
    let store = tokenvault::store::connect(&url, &Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let env = envelope(&key_spec("k1", 1));
    let (access, refresh) = random_tokens();
    store
        .upsert(new_connection(&env, "u", "spotify", &access, Some(&refresh), None).await)
        .await
        .unwrap();

    let dump = std::process::Command::new("pg_dump")
        .arg("--data-only")
        .arg(&url)
        .output()
        .expect("pg_dump is installed (scripts/test.sh installs postgresql-client)");
    assert!(
        dump.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.contains("COPY public.connections"),
        "the dump contains the connections table"
    );
    assert_absent(&dump.stdout, &access, "pg_dump");
    assert_absent(&dump.stdout, &refresh, "pg_dump");
}

#[tokio::test]
async fn unreachable_postgres_names_host_and_port() {
    let options = tokenvault::store::PoolOptions {
        acquire_timeout: std::time::Duration::from_secs(2),
        ..Default::default()
    };
    let err =
        match tokenvault::store::connect("postgres://postgres@127.0.0.1:1/test", &options).await {
            Ok(_) => panic!("connected to a closed port"),
            Err(err) => err,
        };
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("cannot reach PostgreSQL at 127.0.0.1:1:"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_database_scheme_is_explained() {
    let err = tokenvault::store::connect("mysql://localhost/db", &Default::default())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("use sqlite://PATH or postgres://"),
        "{err}"
    );
}
