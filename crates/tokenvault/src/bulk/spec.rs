//! What an action is asked to do: the input of `POST /v1/bulk-actions`, its
//! validation, and the validated spec stored with the action.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use reqwest::Method;
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BulkError;
use crate::domain::{ConnectionStatus, IntegrationKey, UserId};
use crate::proxy::{ApiPath, ApiRequest};

/// What `POST /v1/bulk-actions` (and `tokenvault bulk run`) take.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BulkSpecInput {
    /// A configured integration with an `api_base_url`.
    pub integration: String,
    pub users: UsersInput,
    pub request: RequestInput,
    /// RFC 3339 time before which nothing is sent (default: now).
    #[serde(default)]
    pub not_before: Option<String>,
    /// Sends per second for this action (default: the integration's
    /// `rate_limit_per_second`, else 50).
    #[serde(default)]
    pub rate_per_second: Option<f64>,
}

/// The users to act for: a list of ids, or every connection with a status.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum UsersInput {
    List(Vec<String>),
    Select(UsersByStatus),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct UsersByStatus {
    /// Every connection of the integration with this status when the action
    /// is created (`connected`).
    pub status: String,
}

/// The request sent for each user, relative to the integration's API.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct RequestInput {
    /// GET, HEAD, POST, PUT, PATCH or DELETE.
    pub method: String,
    /// Below the integration's `api_base_url`, e.g. `me/tracks`.
    pub path: String,
    /// Query parameters (values are strings, numbers or booleans), or a
    /// percent-encoded query string.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub query: Option<Value>,
    /// Sent as JSON.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub body: Option<Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A validated request, stored with the action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BulkRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

impl BulkRequest {
    /// The request as [`Vault::request_with`](crate::vault::Vault::request_with) takes it.
    pub fn to_api_request(&self) -> Result<ApiRequest, BulkError> {
        let method = Method::from_str(&self.method)
            .map_err(|_| BulkError::invalid("request.method", "not an HTTP method"))?;
        let path = ApiPath::parse(&self.path)
            .map_err(|err| BulkError::invalid("request.path", err.to_string()))?;
        let mut request = ApiRequest::new(method, path);
        request.query = self.query.clone();
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        for (name, value) in &self.headers {
            let name = HeaderName::from_str(name).map_err(|_| {
                BulkError::invalid("request.headers", format!("{name:?} is not a header name"))
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                BulkError::invalid(
                    "request.headers",
                    format!("the value of {name} is not a header value"),
                )
            })?;
            request.headers.insert(name, value);
        }
        Ok(request)
    }

    /// Safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
        )
    }
}

/// Who an action is for, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Users(Vec<UserId>),
    Status(ConnectionStatus),
}

/// A validated action, ready to create.
#[derive(Debug, Clone)]
pub struct BulkSpec {
    pub integration: IntegrationKey,
    pub targets: Targets,
    pub request: BulkRequest,
    pub not_before: Option<DateTime<Utc>>,
    pub rate_per_second: Option<f64>,
}

/// What is stored as the action's `spec` column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredSpec {
    pub request: BulkRequest,
    /// `{"status": "connected"}` or `{"count": N}` for a list.
    pub users: Value,
}

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

pub(super) fn parse_request(input: &RequestInput) -> Result<BulkRequest, BulkError> {
    let method = input.method.trim().to_ascii_uppercase();
    if !METHODS.contains(&method.as_str()) {
        return Err(BulkError::invalid(
            "request.method",
            format!("{:?} is not one of {}", input.method, METHODS.join(", ")),
        ));
    }
    let path = ApiPath::parse(input.path.trim())
        .map_err(|err| BulkError::invalid("request.path", err.to_string()))?;
    let query = match &input.query {
        None | Some(Value::Null) => None,
        Some(Value::String(raw)) => Some(raw.trim_start_matches('?').to_owned()),
        Some(Value::Object(pairs)) => {
            let mut encoded = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in pairs {
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(BulkError::invalid(
                            "request.query",
                            format!("{name}: values must be strings, numbers or booleans"),
                        ));
                    }
                };
                encoded.append_pair(name, &value);
            }
            Some(encoded.finish())
        }
        Some(_) => {
            return Err(BulkError::invalid(
                "request.query",
                "an object of parameters or a query string",
            ));
        }
    }
    .filter(|q| !q.is_empty());
    if let Some(q) = &query {
        crate::proxy::check_query(q)
            .map_err(|err| BulkError::invalid("request.query", err.to_string()))?;
    }
    if input.body.is_some() && matches!(method.as_str(), "GET" | "HEAD") {
        return Err(BulkError::invalid(
            "request.body",
            format!("a {method} request has no body"),
        ));
    }
    // Names and values are checked by `to_api_request` below.
    for name in input.headers.keys() {
        if HeaderName::from_str(name)
            .is_ok_and(|parsed| !crate::proxy::forwards_request_header(&parsed))
        {
            return Err(BulkError::invalid(
                "request.headers",
                format!("{name} is set by tokenvault or is hop-by-hop; it cannot be given"),
            ));
        }
    }
    let request = BulkRequest {
        method,
        path: path.as_str().to_owned(),
        query,
        headers: input
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        body: input.body.clone(),
    };
    request.to_api_request()?;
    Ok(request)
}
