//! Lenient parsing of token-endpoint (and related) responses.
//!
//! Providers deviate from RFC 6749 §5.1 in many small ways; everything here is
//! written to accept those deviations without ever accepting an error body as
//! a success.

use std::fmt;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{Map, Value};

use super::error::{BODY_EXCERPT_MAX_CHARS, OAuthError, RetryAfter, truncate_chars};

/// A successful token response.
///
/// `Debug` is hand-written and never prints a token; `extra` is printed as its
/// key list only because providers put further secrets there (Slack bot
/// tokens, etc.).
#[derive(Clone)]
pub struct TokenResponse {
    pub access_token: SecretString,
    /// Absent on many refresh responses: the caller must then keep using the
    /// refresh token it already has (no rotation happened).
    pub refresh_token: Option<SecretString>,
    /// As sent (`"Bearer"`, `"bearer"`, ...), not normalised.
    pub token_type: Option<String>,
    /// Lifetime in seconds. `None` when absent, null, negative or unparseable.
    pub expires_in: Option<u64>,
    /// Granted scopes, if the provider said. `Some(vec![])` when the provider
    /// sent an empty scope string; `None` when it sent nothing (RFC 6749: the
    /// requested scopes were granted).
    pub scopes: Option<Vec<String>>,
    pub id_token: Option<SecretString>,
    /// Every other field of the token object (the object at `token_path` when
    /// one was given).
    pub extra: Map<String, Value>,
}

impl TokenResponse {
    /// Absolute expiry, given the instant the response was received.
    pub fn expires_at(&self, received_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let secs = i64::try_from(self.expires_in?).ok()?;
        received_at.checked_add_signed(chrono::TimeDelta::try_seconds(secs)?)
    }
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const REDACTED: &str = "[redacted]";
        f.debug_struct("TokenResponse")
            .field("access_token", &REDACTED)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| REDACTED),
            )
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .field("id_token", &self.id_token.as_ref().map(|_| REDACTED))
            .field("extra_keys", &self.extra.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// RFC 8628 §3.2 device authorization response.
#[derive(Debug, Clone)]
pub struct DeviceAuthorization {
    pub device_code: SecretString,
    pub user_code: String,
    /// `verification_uri`, or Google's `verification_url`.
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds. Defaults to 900 when the provider omits it or sends garbage.
    pub expires_in: u64,
    /// Minimum seconds between polls. Defaults to 5 (RFC 8628 §3.2) when
    /// absent, zero or unparseable.
    pub interval: u64,
}

/// Default lifetime assumed for a device code when the provider omits `expires_in`.
pub const DEFAULT_DEVICE_CODE_EXPIRES_IN: u64 = 900;
/// RFC 8628 default polling interval.
pub const DEFAULT_DEVICE_POLL_INTERVAL: u64 = 5;

/// Outcome of one device-token poll (RFC 8628 §3.5).
#[derive(Debug, Clone)]
pub enum DevicePoll {
    /// `authorization_pending`: poll again after `interval`.
    Pending,
    /// `slow_down`: increase the interval by 5 s (RFC 8628 §3.5), then poll again.
    SlowDown,
    Complete(TokenResponse),
    /// `access_denied`: the user refused.
    Denied,
    /// `expired_token`: the device code expired; start over.
    Expired,
}

/// A raw HTTP response, already read (bounded) from the wire.
pub(crate) struct RawResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<RetryAfter>,
    pub www_authenticate: Option<String>,
    pub body: Vec<u8>,
    /// The secrets the request carried: removed from any error text taken
    /// from this answer.
    pub secrets: crate::privacy::Scrubber,
}

impl RawResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error for a response the caller has decided is a failure (any
    /// non-2xx): an OAuth error from the body or the `WWW-Authenticate`
    /// challenge, else a plain HTTP error with a short body excerpt.
    pub fn failure(&self) -> OAuthError {
        // Scrubbed before anything is parsed or cut short, so no part of a
        // secret the provider echoed survives in the error.
        let body = self.secrets.scrub_bytes(&self.body);
        let from_body = parse_body(self.content_type.as_deref(), &body)
            .as_ref()
            .and_then(oauth_error_of);
        let from_header = || {
            self.www_authenticate
                .as_deref()
                .map(|header| self.secrets.scrub(header))
                .as_deref()
                .and_then(parse_www_authenticate_error)
        };
        match from_body.or_else(from_header) {
            Some((error, description)) => OAuthError::Provider {
                status: self.status,
                error: printable(&error),
                description: description.as_deref().map(printable),
                retry_after: self.retry_after,
            },
            None => OAuthError::Http {
                status: self.status,
                retry_after: self.retry_after,
                body_excerpt: truncate_chars(
                    &printable(&String::from_utf8_lossy(&body)),
                    BODY_EXCERPT_MAX_CHARS,
                ),
            },
        }
    }

    /// Returns the parsed body object of a 2xx response without an OAuth
    /// error; every other response becomes an error. `Ok(None)` means a 2xx
    /// whose body is neither a JSON object nor form-encoded.
    pub fn into_object(self) -> Result<Option<Map<String, Value>>, OAuthError> {
        if !self.is_success() {
            return Err(self.failure());
        }
        let object = parse_body(self.content_type.as_deref(), &self.body);
        if object.as_ref().and_then(oauth_error_of).is_some() {
            // An error inside a 2xx (GitHub, Slack): read again, scrubbed.
            return Err(self.failure());
        }
        Ok(object)
    }

    pub fn into_token_response(
        self,
        token_path: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        match self.into_object()? {
            Some(object) => token_from_object(object, token_path),
            None => Err(OAuthError::InvalidResponse(
                "token response body is neither a JSON object nor form-encoded".into(),
            )),
        }
    }
}

/// Provider text as kept in errors: one line, control characters (NUL,
/// which PostgreSQL cannot store, and line breaks, which forge log lines)
/// turned into spaces.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Parses a successful (HTTP 2xx) token-endpoint body.
///
/// * `content_type`: the response `Content-Type`; JSON and
///   `application/x-www-form-urlencoded` are recognised, anything else is
///   sniffed.
/// * `token_path`: optional JSON pointer (`"/authed_user"`, `"/data"`) to the
///   object holding the token fields; a leading `/` may be omitted.
///
/// Error bodies (`error` field, Slack's `"ok": false`) become
/// [`OAuthError::Provider`] with status 200; a body without `access_token`
/// becomes [`OAuthError::InvalidResponse`].
pub fn parse_token_response(
    content_type: Option<&str>,
    body: &[u8],
    token_path: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    RawResponse {
        status: 200,
        content_type: content_type.map(str::to_string),
        retry_after: None,
        www_authenticate: None,
        body: body.to_vec(),
        secrets: crate::privacy::Scrubber::new(),
    }
    .into_token_response(token_path)
}

/// Parses a body as a JSON object or a form-encoded map, by Content-Type first
/// and by sniffing otherwise.
pub(crate) fn parse_body(content_type: Option<&str>, body: &[u8]) -> Option<Map<String, Value>> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let as_json = || match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    if ct.contains("json") {
        return as_json().or_else(|| looks_like_form(body).then(|| parse_form(body)));
    }
    if ct.contains("x-www-form-urlencoded") {
        return Some(parse_form(body));
    }
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"{") {
        return as_json();
    }
    looks_like_form(body).then(|| parse_form(body))
}

fn looks_like_form(body: &[u8]) -> bool {
    let body = body.trim_ascii();
    !body.is_empty()
        && body.contains(&b'=')
        && !body
            .iter()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b'<' | b'>' | b'{' | b'"'))
}

fn parse_form(body: &[u8]) -> Map<String, Value> {
    url::form_urlencoded::parse(body.trim_ascii())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

/// Extracts an OAuth error from a body object: a non-empty `error` string
/// (RFC 6749 §5.2, GitHub's 200 errors), an `error` object (Google API style),
/// or Slack's `"ok": false`.
fn oauth_error_of(object: &Map<String, Value>) -> Option<(String, Option<String>)> {
    let description = || {
        ["error_description", "error_message", "message"]
            .iter()
            .find_map(|k| non_empty_str(object.get(*k)))
    };
    match object.get("error") {
        Some(Value::String(e)) if !e.trim().is_empty() => {
            return Some((e.trim().to_string(), description()));
        }
        Some(Value::Object(inner)) => {
            let code = non_empty_str(inner.get("status"))
                .or_else(|| non_empty_str(inner.get("error")))
                .or_else(|| match inner.get("code") {
                    Some(Value::Number(n)) => Some(n.to_string()),
                    other => non_empty_str(other),
                })
                .unwrap_or_else(|| "error".to_string());
            let desc = non_empty_str(inner.get("message")).or_else(description);
            return Some((code, desc));
        }
        _ => {}
    }
    if matches!(object.get("ok"), Some(Value::Bool(false))) {
        return Some(("unknown_error".to_string(), description()));
    }
    None
}

fn non_empty_str(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Parses `error="..."` / `error_description="..."` from a Bearer
/// `WWW-Authenticate` challenge (RFC 6750 §3).
fn parse_www_authenticate_error(header: &str) -> Option<(String, Option<String>)> {
    fn param(header: &str, name: &str) -> Option<String> {
        let mut rest = header;
        while let Some(pos) = rest.find(name) {
            let before_ok = pos == 0 || matches!(rest.as_bytes()[pos - 1], b' ' | b',' | b'\t');
            let after = rest[pos + name.len()..].trim_start();
            if before_ok && let Some(after) = after.strip_prefix('=') {
                let after = after.trim_start();
                let value = if let Some(quoted) = after.strip_prefix('"') {
                    quoted.split('"').next().unwrap_or("")
                } else {
                    after.split([',', ' ']).next().unwrap_or("")
                };
                return (!value.is_empty()).then(|| value.to_string());
            }
            rest = &rest[pos + name.len()..];
        }
        None
    }
    let error = param(header, "error")?;
    Some((error, param(header, "error_description")))
}

fn token_from_object(
    root: Map<String, Value>,
    token_path: Option<&str>,
) -> Result<TokenResponse, OAuthError> {
    let mut object = match token_path
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "/")
    {
        None => root,
        Some(path) => {
            let pointer = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
            match Value::Object(root).pointer_mut(&pointer).map(Value::take) {
                Some(Value::Object(m)) => m,
                Some(_) => {
                    return Err(OAuthError::InvalidResponse(format!(
                        "token path `{pointer}` is not an object"
                    )));
                }
                None => {
                    return Err(OAuthError::InvalidResponse(format!(
                        "token path `{pointer}` not found in response"
                    )));
                }
            }
        }
    };

    let access_token = match object.remove("access_token") {
        Some(Value::String(s)) if !s.trim().is_empty() => SecretString::from(s),
        _ => {
            return Err(OAuthError::InvalidResponse(
                "response has no access_token".into(),
            ));
        }
    };
    let secret = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(SecretString::from(s)),
        _ => None,
    };
    let refresh_token = secret(object.remove("refresh_token"));
    let id_token = secret(object.remove("id_token"));
    let token_type = match object.remove("token_type") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        _ => None,
    };
    let expires_in = object.remove("expires_in").as_ref().and_then(lenient_u64);
    let scopes = object.remove("scope").as_ref().and_then(lenient_scopes);

    Ok(TokenResponse {
        access_token,
        refresh_token,
        token_type,
        expires_in,
        scopes,
        id_token,
        extra: object,
    })
}

/// A non-negative integer from a JSON number (integer or float) or a numeric
/// string. Negative, non-finite, or garbage values → `None`.
pub(crate) fn lenient_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

/// Scopes from a space- or comma-separated string, or a JSON array of strings.
/// Order is preserved and duplicates removed.
pub(crate) fn lenient_scopes(v: &Value) -> Option<Vec<String>> {
    let raw: Vec<&str> = match v {
        Value::String(s) => s.split(|c: char| c.is_whitespace() || c == ',').collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    Some(dedup(raw))
}

/// Splits a scope string the way token responses are parsed (whitespace and
/// commas), dropping empties and duplicates.
pub fn parse_scope_string(s: &str) -> Vec<String> {
    dedup(s.split(|c: char| c.is_whitespace() || c == ',').collect())
}

fn dedup(raw: Vec<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for s in raw.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// A verification address as a link: TIDAL sends `link.tidal.com/ABCDE`
/// without a scheme.
fn with_scheme(uri: String) -> String {
    if uri.contains("://") {
        uri
    } else {
        format!("https://{uri}")
    }
}

pub(crate) fn device_authorization_from_object(
    mut object: Map<String, Value>,
) -> Result<DeviceAuthorization, OAuthError> {
    let mut take_str = |keys: &[&str]| {
        keys.iter().find_map(|k| match object.remove(*k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
            _ => None,
        })
    };
    let missing =
        |f: &str| OAuthError::InvalidResponse(format!("device authorization response has no {f}"));
    // RFC 8628 names, Google's `verification_url`, TIDAL's camelCase.
    let device_code =
        take_str(&["device_code", "deviceCode"]).ok_or_else(|| missing("device_code"))?;
    let user_code = take_str(&["user_code", "userCode"]).ok_or_else(|| missing("user_code"))?;
    let verification_uri = take_str(&["verification_uri", "verification_url", "verificationUri"])
        .map(with_scheme)
        .ok_or_else(|| missing("verification_uri"))?;
    let verification_uri_complete = take_str(&[
        "verification_uri_complete",
        "verification_url_complete",
        "verificationUriComplete",
    ])
    .map(with_scheme);
    let expires_in = object
        .get("expires_in")
        .or_else(|| object.get("expiresIn"))
        .and_then(lenient_u64)
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_DEVICE_CODE_EXPIRES_IN);
    let interval = object
        .get("interval")
        .and_then(lenient_u64)
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_DEVICE_POLL_INTERVAL);
    Ok(DeviceAuthorization {
        device_code: SecretString::from(device_code),
        user_code,
        verification_uri,
        verification_uri_complete,
        expires_in,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;
    use serde_json::json;

    fn parse_json(v: Value) -> Result<TokenResponse, OAuthError> {
        parse_token_response(Some("application/json"), v.to_string().as_bytes(), None)
    }

    #[test]
    fn lenient_expires_in() {
        let cases = [
            (json!(3600), Some(3600)),
            (json!("3600"), Some(3600)),
            (json!(" 3600 "), Some(3600)),
            (json!(3599.7), Some(3599)),
            (json!("3599.7"), Some(3599)),
            (json!(null), None),
            (json!(-5), None),
            (json!("-5"), None),
            (json!("soon"), None),
            (json!(true), None),
        ];
        for (v, expected) in cases {
            let t = parse_json(json!({"access_token": "a", "expires_in": v})).unwrap();
            assert_eq!(t.expires_in, expected, "expires_in = {v}");
        }
        let t = parse_json(json!({"access_token": "a"})).unwrap();
        assert_eq!(t.expires_in, None);
    }

    #[test]
    fn lenient_scope_forms() {
        let cases = [
            (json!("a b  c"), Some(vec!["a", "b", "c"])),
            (json!("repo,gist"), Some(vec!["repo", "gist"])),
            (json!("repo, gist"), Some(vec!["repo", "gist"])),
            (json!(["a", "b", "a"]), Some(vec!["a", "b"])),
            (json!(""), Some(vec![])),
            (json!(null), None),
            (json!(42), None),
        ];
        for (v, expected) in cases {
            let t = parse_json(json!({"access_token": "a", "scope": v})).unwrap();
            let expected = expected.map(|e| e.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(t.scopes, expected, "scope = {v}");
        }
    }

    #[test]
    fn extras_keep_unknown_fields() {
        let t =
            parse_json(json!({"access_token": "a", "user_id": "u1", "refresh_token": ""})).unwrap();
        assert_eq!(t.extra.get("user_id"), Some(&json!("u1")));
        assert!(t.refresh_token.is_none());
        assert!(!t.extra.contains_key("access_token"));
    }

    #[test]
    fn sniffs_form_without_content_type() {
        let t = parse_token_response(
            None,
            b"access_token=gho_x&scope=repo%2Cgist&token_type=bearer",
            None,
        )
        .unwrap();
        assert_eq!(t.access_token.expose_secret(), "gho_x");
        assert_eq!(t.scopes.unwrap(), vec!["repo", "gist"]);
        let t = parse_token_response(Some("text/plain"), br#"{"access_token":"j"}"#, None).unwrap();
        assert_eq!(t.access_token.expose_secret(), "j");
    }

    #[test]
    fn html_200_is_invalid_response() {
        let err = parse_token_response(Some("text/html"), b"<html>hi</html>", None).unwrap_err();
        assert!(matches!(err, OAuthError::InvalidResponse(_)), "{err:?}");
    }

    #[test]
    fn token_path_variants() {
        let body = json!({"ok": true, "authed_user": {"access_token": "xoxp", "scope": "a,b"}});
        for path in ["/authed_user", "authed_user"] {
            let t = parse_token_response(None, body.to_string().as_bytes(), Some(path)).unwrap();
            assert_eq!(t.access_token.expose_secret(), "xoxp");
        }
        let err =
            parse_token_response(None, body.to_string().as_bytes(), Some("/nope")).unwrap_err();
        assert!(matches!(err, OAuthError::InvalidResponse(_)));
    }

    #[test]
    fn www_authenticate_error() {
        let h = r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#;
        assert_eq!(
            parse_www_authenticate_error(h),
            Some((
                "invalid_token".into(),
                Some("The access token expired".into())
            ))
        );
        assert_eq!(parse_www_authenticate_error(r#"Bearer realm="x""#), None);
    }

    #[test]
    fn google_style_error_object() {
        let err = parse_json(
            json!({"error": {"code": 401, "message": "bad", "status": "UNAUTHENTICATED"}}),
        )
        .unwrap_err();
        assert_eq!(err.oauth_error_code(), Some("UNAUTHENTICATED"));
    }

    #[test]
    fn expires_at_adds_seconds() {
        let t = parse_json(json!({"access_token": "a", "expires_in": 60})).unwrap();
        let now = Utc::now();
        assert_eq!(
            t.expires_at(now),
            Some(now + chrono::TimeDelta::seconds(60))
        );
    }
}
