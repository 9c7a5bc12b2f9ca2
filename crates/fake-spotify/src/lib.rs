//! A fake Spotify for tests: the parts a pre-save campaign touches, with
//! the behaviour that matters to a token broker.
//!
//! - `POST /api/token`: refresh grant with HTTP Basic client authentication
//!   (as Spotify requires); every refresh rotates both tokens and the old
//!   refresh token stops working (`invalid_grant` if replayed).
//! - `PUT /v1/me/tracks?ids=…` (or a JSON body `{"ids": [...]}`): saves
//!   tracks; `GET /v1/me/tracks/contains?ids=…`: `[true, false, …]`;
//!   `GET /v1/me`: the profile.
//! - An access token is accepted only while it is the user's current one
//!   and the user is not marked stale ([`FakeSpotify::mark_stale`]): a token
//!   the fake "considers stale" gets 401 until the user refreshes.
//! - Every `rate_limit_every`-th API call answers 429 with `Retry-After`.
//!
//! Tokens are `at.<user>.<n>` / `rt.<user>.<n>`. The fake counts successful
//! saves per user, refreshes per user, and the arrival time of every API
//! call (for "never more than N per second" checks).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct Options {
    pub client_id: String,
    pub client_secret: String,
    /// Every Nth API call (1-based, counting all API calls) answers 429.
    pub rate_limit_every: Option<u64>,
    /// The `Retry-After` of those 429s, in seconds.
    pub retry_after_secs: u64,
    /// Lifetime of issued access tokens.
    pub expires_in: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            client_id: "presave-client".into(),
            client_secret: "presave-secret".into(),
            rate_limit_every: None,
            retry_after_secs: 1,
            expires_in: 3600,
        }
    }
}

#[derive(Default)]
struct UserState {
    generation: u64,
    stale: bool,
    saved: HashSet<String>,
    /// Successful `PUT /v1/me/tracks` calls.
    save_calls: u64,
    refreshes: u64,
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, UserState>,
    api_calls: u64,
    /// Unix milliseconds of every API call's arrival.
    arrivals: Vec<u128>,
    statuses: BTreeMap<u16, u64>,
    replayed_refresh_tokens: u64,
}

/// A running fake on `127.0.0.1`.
#[derive(Clone)]
pub struct FakeSpotify {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    options: Arc<Options>,
    inner: Arc<Mutex<Inner>>,
}

type Shared = (Arc<Options>, Arc<Mutex<Inner>>);

impl FakeSpotify {
    pub async fn start(options: Options) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the fake Spotify");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let options = Arc::new(options);
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/api/token", post(token))
            .route("/v1/me", get(me))
            .route("/v1/me/tracks", axum::routing::put(save_tracks))
            .route("/v1/me/tracks/contains", get(contains))
            .with_state((Arc::clone(&options), Arc::clone(&inner)));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base,
            options,
            inner,
        }
    }

    /// A `providers.toml` entry pointing the built-in `spotify` provider at
    /// this fake.
    pub fn providers_toml(&self) -> String {
        format!(
            "[providers.spotify]\n\
             authorization_url = \"{0}/authorize\"\n\
             token_url = \"{0}/api/token\"\n\
             userinfo_url = \"{0}/v1/me\"\n\
             api_base_url = \"{0}/v1\"\n",
            self.base
        )
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Issues a user's first tokens: `(access_token, refresh_token)`.
    pub fn seed(&self, user: &str) -> (String, String) {
        let mut inner = self.inner.lock().unwrap();
        let state = inner.users.entry(user.to_owned()).or_default();
        state.generation = 0;
        (format!("at.{user}.0"), format!("rt.{user}.0"))
    }

    /// The user's current access token gets 401 until they refresh.
    pub fn mark_stale(&self, user: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.users.entry(user.to_owned()).or_default().stale = true;
    }

    /// Successful save calls per user (users with none are absent).
    pub fn save_calls(&self) -> HashMap<String, u64> {
        let inner = self.inner.lock().unwrap();
        inner
            .users
            .iter()
            .filter(|(_, s)| s.save_calls > 0)
            .map(|(u, s)| (u.clone(), s.save_calls))
            .collect()
    }

    pub fn has_saved(&self, user: &str, track: &str) -> bool {
        let inner = self.inner.lock().unwrap();
        inner
            .users
            .get(user)
            .is_some_and(|s| s.saved.contains(track))
    }

    pub fn refreshes(&self, user: &str) -> u64 {
        let inner = self.inner.lock().unwrap();
        inner.users.get(user).map_or(0, |s| s.refreshes)
    }

    pub fn total_refreshes(&self) -> u64 {
        let inner = self.inner.lock().unwrap();
        inner.users.values().map(|s| s.refreshes).sum()
    }

    /// Refresh tokens presented after they were rotated away.
    pub fn replayed_refresh_tokens(&self) -> u64 {
        self.inner.lock().unwrap().replayed_refresh_tokens
    }

    /// API calls by answered status.
    pub fn statuses(&self) -> BTreeMap<u16, u64> {
        self.inner.lock().unwrap().statuses.clone()
    }

    /// The most API calls that arrived within any window of 1,000 ms
    /// (sliding, not only aligned seconds).
    pub fn max_calls_in_any_second(&self) -> usize {
        let inner = self.inner.lock().unwrap();
        let mut arrivals = inner.arrivals.clone();
        arrivals.sort_unstable();
        let mut best = 0;
        let mut start = 0;
        for end in 0..arrivals.len() {
            while arrivals[end] - arrivals[start] >= 1000 {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn error(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn token(
    State((options, inner)): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", options.client_id, options.client_secret))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_client", "error_description": "Invalid client"}),
        );
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type"}),
        );
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let Some((user, generation)) = parse_token("rt", &presented) else {
        return error(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
    };
    let mut inner = inner.lock().unwrap();
    let Some(state) = inner.users.get_mut(&user) else {
        return error(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
    };
    if state.generation != generation {
        inner.replayed_refresh_tokens += 1;
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": "Refresh token revoked"}),
        );
    }
    state.generation += 1;
    state.stale = false;
    state.refreshes += 1;
    let n = state.generation;
    axum::Json(json!({
        "access_token": format!("at.{user}.{n}"),
        "token_type": "Bearer",
        "expires_in": options.expires_in,
        "refresh_token": format!("rt.{user}.{n}"),
        "scope": "user-library-modify user-library-read user-read-email",
    }))
    .into_response()
}

/// `<kind>.<user>.<n>` → (user, n); user ids may contain dots.
fn parse_token(kind: &str, token: &str) -> Option<(String, u64)> {
    let rest = token.strip_prefix(kind)?.strip_prefix('.')?;
    let (user, n) = rest.rsplit_once('.')?;
    Some((user.to_owned(), n.parse().ok()?))
}

/// Counts the call, applies the 429 rule, and checks the bearer token;
/// `Ok(user)` when the call may proceed.
fn admit(
    options: &Options,
    inner: &mut Inner,
    headers: &HeaderMap,
) -> Result<String, Box<Response>> {
    inner.api_calls += 1;
    inner.arrivals.push(now_ms());
    let call = inner.api_calls;
    let answer = |inner: &mut Inner, status: StatusCode, response: Response| {
        *inner.statuses.entry(status.as_u16()).or_default() += 1;
        response
    };
    if options
        .rate_limit_every
        .is_some_and(|n| call.is_multiple_of(n))
    {
        let response = (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", options.retry_after_secs.to_string())],
            axum::Json(json!({"error": {"status": 429, "message": "API rate limit exceeded"}})),
        )
            .into_response();
        return Err(Box::new(answer(
            inner,
            StatusCode::TOO_MANY_REQUESTS,
            response,
        )));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let valid = parse_token("at", token).filter(|(user, n)| {
        inner
            .users
            .get(user)
            .is_some_and(|s| s.generation == *n && !s.stale)
    });
    match valid {
        Some((user, _)) => {
            *inner.statuses.entry(200).or_default() += 1;
            Ok(user)
        }
        None => {
            let response = error(
                StatusCode::UNAUTHORIZED,
                json!({"error": {"status": 401, "message": "The access token expired"}}),
            );
            Err(Box::new(answer(inner, StatusCode::UNAUTHORIZED, response)))
        }
    }
}

fn ids(query: &HashMap<String, String>, body: Option<&Value>) -> Vec<String> {
    let mut ids: Vec<String> = query
        .get("ids")
        .map(|ids| ids.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(list) = body.and_then(|b| b["ids"].as_array()) {
        ids.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    ids.retain(|id| !id.is_empty());
    ids
}

async fn save_tracks(
    State((options, inner)): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut inner = inner.lock().unwrap();
    let user = match admit(&options, &mut inner, &headers) {
        Ok(user) => user,
        Err(response) => return *response,
    };
    let body: Option<Value> = serde_json::from_str(&body).ok();
    let ids = ids(&query, body.as_ref());
    if ids.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": {"status": 400, "message": "Missing ids"}}),
        );
    }
    let state = inner.users.get_mut(&user).expect("admitted");
    state.saved.extend(ids);
    state.save_calls += 1;
    StatusCode::OK.into_response()
}

async fn contains(
    State((options, inner)): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut inner = inner.lock().unwrap();
    let user = match admit(&options, &mut inner, &headers) {
        Ok(user) => user,
        Err(response) => return *response,
    };
    let state = &inner.users[&user];
    let answer: Vec<bool> = ids(&query, None)
        .iter()
        .map(|id| state.saved.contains(id))
        .collect();
    axum::Json(answer).into_response()
}

async fn me(State((options, inner)): State<Shared>, headers: HeaderMap) -> Response {
    let mut inner = inner.lock().unwrap();
    match admit(&options, &mut inner, &headers) {
        Ok(user) => axum::Json(json!({
            "id": user,
            "email": format!("{user}@fans.example"),
            "display_name": format!("Fan {user}"),
            "product": "premium",
        }))
        .into_response(),
        Err(response) => *response,
    }
}
