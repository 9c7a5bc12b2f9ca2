//! The wire format of a grant, shared by the service's
//! `PUT /v1/users/{user_id}/connections/{integration}` and the lines of an
//! import file (`tokenvault import`), and its conversion into an
//! [`ImportedGrant`].

use std::fmt;

use super::{ImportedGrant, InvalidGrant};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde_json::{Map, Value};

/// A token on the wire. Its type errors never quote the value (serde's
/// default would print a numeric "token" in the message).
pub struct WireToken(SecretString);

impl<'de> Deserialize<'de> for WireToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TokenVisitor;

        impl Visitor<'_> for TokenVisitor {
            type Value = WireToken;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireToken, E> {
                Ok(WireToken(SecretString::from(v)))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<WireToken, E> {
                Ok(WireToken(SecretString::from(v)))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<WireToken, E> {
                Err(E::invalid_type(Unexpected::Other("a number"), &self))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<WireToken, E> {
                Err(E::invalid_type(Unexpected::Other("a number"), &self))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<WireToken, E> {
                Err(E::invalid_type(Unexpected::Other("a number"), &self))
            }
        }

        // `any`, not `str`: serde_json reports a mismatch for `str` itself,
        // quoting the value, without asking the visitor.
        deserializer.deserialize_any(TokenVisitor)
    }
}

/// The body of `PUT /v1/users/{user_id}/connections/{integration}`.
#[derive(Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema), schema(as = ImportBody))]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// Visible ASCII, at most 16 KiB.
    #[cfg_attr(
        feature = "utoipa",
        schema(value_type = String, pattern = "^[!-~]+$", min_length = 1, max_length = 16384)
    )]
    pub access_token: WireToken,
    /// Visible ASCII, at most 16 KiB; without one the connection ends
    /// `expired` when the access token does.
    #[serde(default)]
    #[cfg_attr(
        feature = "utoipa",
        schema(value_type = Option<String>, pattern = "^[!-~]+$", min_length = 1, max_length = 16384)
    )]
    pub refresh_token: Option<WireToken>,
    /// When the access token expires: RFC 3339 (`2030-01-31T12:00:00Z`) or
    /// whole Unix seconds; absent = never.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<Value>,
    /// Granted scopes: an array, or one space-separated string.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(schema_with = scopes_schema))]
    pub scopes: Option<Value>,
    /// A JSON object of at most 16 KiB kept with the connection.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub metadata: Option<Value>,
}

/// One line of an import file: a [`GrantBody`] plus whose it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportLine {
    pub user_id: String,
    pub integration: String,
    pub access_token: WireToken,
    #[serde(default)]
    pub refresh_token: Option<WireToken>,
    #[serde(default)]
    pub expires_at: Option<Value>,
    #[serde(default)]
    pub scopes: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

impl ImportLine {
    /// Whose grant it is (user id and integration key, unchecked), and the grant.
    pub fn split(self) -> (String, String, GrantBody) {
        let body = GrantBody {
            access_token: self.access_token,
            refresh_token: self.refresh_token,
            expires_at: self.expires_at,
            scopes: self.scopes,
            metadata: self.metadata,
        };
        (self.user_id, self.integration, body)
    }
}

const TIME_FORMS: &str = "an RFC 3339 time like 2030-01-31T12:00:00Z or whole Unix seconds";

fn expires_at(raw: Option<Value>) -> Result<Option<DateTime<Utc>>, InvalidGrant> {
    let bad = |problem: String| InvalidGrant::ExpiresAt(problem);
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
            .map(|at| Some(at.to_utc()))
            .map_err(|_| bad(format!("must be {TIME_FORMS}, got {text:?}"))),
        Some(Value::Number(number)) => number
            .as_i64()
            .and_then(|secs| DateTime::from_timestamp(secs, 0))
            .map(Some)
            .ok_or_else(|| bad(format!("must be {TIME_FORMS}, got {number}"))),
        Some(other) => Err(bad(format!(
            "must be {TIME_FORMS}, got {}",
            json_kind(&other)
        ))),
    }
}

fn scopes(raw: Option<Value>) -> Result<Vec<String>, InvalidGrant> {
    let bad =
        || InvalidGrant::Scopes("must be an array of strings or one space-separated string".into());
    match raw {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(scope) => Ok(scope),
                _ => Err(bad()),
            })
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// How an error message names a JSON value's type (never its content).
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl GrantBody {
    /// The grant for [`Vault::import`](crate::vault::Vault::import), which checks the rest.
    pub fn into_grant(self) -> Result<ImportedGrant, InvalidGrant> {
        Ok(ImportedGrant {
            access_token: self.access_token.0,
            refresh_token: self.refresh_token.map(|t| t.0),
            expires_at: expires_at(self.expires_at)?,
            scopes: scopes(self.scopes)?,
            metadata: match self.metadata {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(metadata) => metadata,
            },
        })
    }
}

/// OpenAPI: scopes as requests take them, an array of scopes or one
/// space-separated string (client generators type both).
#[cfg(feature = "utoipa")]
pub fn scopes_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)))
        .item(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(
            "Scopes: an array, or one space-separated string (`\"user-read-email playlist-modify\"`).",
        ))
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn body(json: &str) -> Result<GrantBody, String> {
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(json))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn expiry_takes_rfc3339_or_unix_seconds() {
        let at = |raw: Value| expires_at(Some(raw));
        assert_eq!(
            at(Value::from("2030-01-31T12:00:00+01:00")).unwrap(),
            DateTime::from_timestamp(1_896_087_600, 0)
        );
        assert_eq!(
            at(Value::from(1_896_087_600)).unwrap(),
            DateTime::from_timestamp(1_896_087_600, 0)
        );
        assert_eq!(expires_at(None).unwrap(), None);
        assert_eq!(at(Value::Null).unwrap(), None);
        for bad in [
            Value::from("tomorrow"),
            Value::from(1.5),
            Value::from(true),
            Value::from(i64::MAX),
        ] {
            let err = at(bad.clone()).unwrap_err();
            assert_eq!(err.code(), "invalid_expires_at", "{bad}");
            assert!(err.to_string().contains("RFC 3339"), "{err}");
        }
    }

    #[test]
    fn scopes_take_a_list_or_a_space_separated_string() {
        assert_eq!(
            scopes(Some(serde_json::json!(["a", "b"]))).unwrap(),
            ["a", "b"]
        );
        assert_eq!(scopes(Some(Value::from(" a  b "))).unwrap(), ["a", "b"]);
        assert!(scopes(None).unwrap().is_empty());
        assert_eq!(
            scopes(Some(serde_json::json!(["a", 1])))
                .unwrap_err()
                .code(),
            "invalid_scopes"
        );
        assert!(scopes(Some(serde_json::json!({"a": 1}))).is_err());
    }

    #[test]
    fn body_errors_name_the_field_and_never_a_token() {
        let err = body(r#"{"access_token": 123456789}"#).err().unwrap();
        assert!(err.starts_with("access_token: invalid type"), "{err}");
        assert!(!err.contains("123456789"), "{err}");
        // The import command deserializes from an already parsed value.
        let err = serde_path_to_error::deserialize::<_, ImportLine>(serde_json::json!({
            "user_id": "u", "integration": "x", "access_token": "AT", "refresh_token": 987654321.5
        }))
        .err()
        .unwrap()
        .to_string();
        assert!(err.starts_with("refresh_token: invalid type"), "{err}");
        assert!(!err.contains("987654321"), "{err}");
        let err = body(r#"{"refresh_token": "x"}"#).err().unwrap();
        assert!(err.contains("missing field `access_token`"), "{err}");
        let err = body(r#"{"access_token": "x", "refersh_token": "y"}"#)
            .err()
            .unwrap();
        assert!(err.contains("unknown field `refersh_token`"), "{err}");

        let grant = body(r#"{"access_token": "AT", "refresh_token": null, "metadata": null}"#)
            .unwrap()
            .into_grant()
            .unwrap();
        assert_eq!(grant.access_token.expose_secret(), "AT");
        assert!(grant.refresh_token.is_none());
        assert_eq!(grant.metadata, serde_json::json!({}));
    }
}
