//! An in-process token endpoint answering instantly, rotating refresh
//! tokens: it counts how often each refresh token was presented so the
//! benchmark can check that every connection was refreshed exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use dashmap::DashMap;
use serde_json::json;

#[derive(Clone, Default)]
pub struct TokenEndpoint {
    pub uses: Arc<DashMap<String, u32>>,
    /// Refresh tokens presented a second time (answered `invalid_grant`).
    pub replays: Arc<AtomicU64>,
}

impl TokenEndpoint {
    /// Serves `POST /token` on 127.0.0.1:0 and returns its URL.
    pub async fn start(&self) -> anyhow::Result<String> {
        let this = self.clone();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(
                move |axum::Form(form): axum::Form<HashMap<String, String>>| {
                    let this = this.clone();
                    async move { this.answer(form) }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/token", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }

    fn answer(&self, form: HashMap<String, String>) -> axum::response::Response {
        let token = form.get("refresh_token").cloned().unwrap_or_default();
        let count = {
            let mut entry = self.uses.entry(token.clone()).or_default();
            *entry += 1;
            *entry
        };
        if count > 1 {
            self.replays.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant"})),
            )
                .into_response();
        }
        axum::Json(json!({
            "access_token": format!("AT-after-{token}"),
            "refresh_token": format!("{token}-rotated"),
            "expires_in": 3600,
            "token_type": "Bearer",
        }))
        .into_response()
    }

    pub fn presented(&self) -> usize {
        self.uses.len()
    }
}
