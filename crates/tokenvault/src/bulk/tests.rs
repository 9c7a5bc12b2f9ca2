//! Unit tests of request validation, retry delays and item states.

use super::*;

fn request(method: &str, path: &str) -> RequestInput {
    RequestInput {
        method: method.into(),
        path: path.into(),
        query: None,
        body: None,
        headers: BTreeMap::new(),
    }
}

#[test]
fn requests_are_validated() {
    let ok = parse_request(&RequestInput {
        query: Some(json!({"ids": "a,b", "limit": 5, "flag": true})),
        body: Some(json!({"ids": ["x"]})),
        ..request("put", "/me/tracks")
    })
    .unwrap();
    assert_eq!(ok.method, "PUT");
    assert_eq!(ok.path, "me/tracks");
    assert_eq!(ok.query.as_deref(), Some("flag=true&ids=a%2Cb&limit=5"));
    assert!(ok.is_idempotent());
    assert!(
        !parse_request(&request("POST", "x"))
            .unwrap()
            .is_idempotent()
    );

    for (input, field) in [
        (request("TRACE", "x"), "request.method"),
        (request("GET", "//evil/x"), "request.path"),
        (request("GET", "%2e%2e/admin"), "request.path"),
        (
            RequestInput {
                query: Some(json!({"a": [1]})),
                ..request("GET", "x")
            },
            "request.query",
        ),
        (
            RequestInput {
                query: Some(json!("a=%0d%0a")),
                ..request("GET", "x")
            },
            "request.query",
        ),
        (
            RequestInput {
                body: Some(json!({})),
                ..request("GET", "x")
            },
            "request.body",
        ),
        (
            RequestInput {
                headers: BTreeMap::from([("Authorization".into(), "Bearer x".into())]),
                ..request("GET", "x")
            },
            "request.headers",
        ),
        (
            RequestInput {
                headers: BTreeMap::from([("x-a".into(), "line\nbreak".into())]),
                ..request("GET", "x")
            },
            "request.headers",
        ),
    ] {
        match parse_request(&input) {
            Err(BulkError::Invalid { field: got, .. }) => assert_eq!(got, field, "{input:?}"),
            other => panic!("{input:?}: {other:?}"),
        }
    }
}

#[test]
fn retry_delays_grow_and_stay_capped() {
    let base = Duration::from_secs(1);
    let cap = Duration::from_secs(60);
    let first = retry_delay(1, base, cap);
    assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
    let fourth = retry_delay(4, base, cap);
    assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600));
    assert!(retry_delay(30, base, cap) <= Duration::from_secs(72));
}

#[test]
fn item_states_round_trip() {
    for state in ItemState::ALL {
        assert_eq!(state.as_str().parse::<ItemState>(), Ok(state));
    }
    assert!(ItemState::Succeeded.is_final() && !ItemState::Running.is_final());
}
