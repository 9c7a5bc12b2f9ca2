//! `tokenvault import FILE.jsonl`: loads grants from a legacy token store,
//! one JSON object per line, straight into the configured database, and
//! the wire format it shares with `PUT /v1/users/{user_id}/connections/{integration}`.
//!
//! The file is streamed (memory does not grow with line count beyond one
//! small entry per connection, for duplicate detection), lines are imported
//! a few at a time, and the report stays in line order. Each connection is
//! written in one transaction, so a stopped import leaves nothing
//! half-written, and re-running a file is safe: lines already imported come
//! back `unchanged`.

use std::collections::HashMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use secrecy::SecretString;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokenvault::domain::{IntegrationKey, UserId};
use tokenvault::import::{ImportAction, ImportError, ImportOptions, ImportedGrant, InvalidGrant};
use tokenvault::vault::Vault;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use crate::config::Config;

/// Longest line read; longer lines are rejected without being buffered.
/// Twice the sum of the field limits, leaving room for JSON escapes.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// `tokenvault import --help`.
pub const HELP: &str = "\
Import tokens from a legacy store into the configured database (same configuration as `serve`).

Each line is one JSON object:
  {\"user_id\": \"u-1\", \"integration\": \"github\", \"access_token\": \"...\",
   \"refresh_token\": \"...\", \"expires_at\": \"2030-01-31T12:00:00Z\",
   \"scopes\": [\"repo\"], \"metadata\": {}}
refresh_token, expires_at (RFC 3339 or Unix seconds), scopes (a list or one
space-separated string) and metadata (an object) are optional. Blank lines are skipped;
a second line for the same user_id and integration is rejected as a duplicate.

Idempotent: a connection that already holds a line's grant is left unchanged, so
re-running a file is safe. Tokens tokenvault refreshed since an export are kept
over that older export unless --force. Each connection is written in one transaction.

Rejected lines are listed on stderr as `line N: reason` (never with token values).
Exit status: 0 all lines imported, 2 some lines rejected, 1 the import could not run
or stopped (database or key error; lines reported before are done).";

/// Imports in flight when not told otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 8;

// --- wire format ---------------------------------------------------------

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
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub access_token: WireToken,
    #[serde(default)]
    pub refresh_token: Option<WireToken>,
    /// RFC 3339 (`2030-01-31T12:00:00Z`) or whole Unix seconds.
    #[serde(default)]
    pub expires_at: Option<Value>,
    /// An array of scopes or one space-separated string.
    #[serde(default)]
    pub scopes: Option<Value>,
    #[serde(default)]
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
    fn split(self) -> (String, String, GrantBody) {
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

fn json_kind(value: &Value) -> &'static str {
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
    /// The grant for [`Vault::import`]; the library checks the rest.
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

// --- the command ----------------------------------------------------------

/// What `tokenvault import` was asked to do.
#[derive(Debug, Clone)]
pub struct ImportArgs {
    /// The JSONL file; `-` reads standard input.
    pub file: PathBuf,
    /// Where to write rejected lines as JSONL.
    pub rejects: Option<PathBuf>,
    pub dry_run: bool,
    pub force: bool,
    pub concurrency: usize,
}

/// The command finished but rejected some lines; `main` exits with 2.
#[derive(Debug)]
pub struct LinesRejected(pub u64);

impl fmt::Display for LinesRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line{} rejected (listed above); fix them and run the import again: lines already imported come back unchanged",
            self.0,
            if self.0 == 1 { " was" } else { "s were" }
        )
    }
}

impl std::error::Error for LinesRejected {}

/// Counts by outcome.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub created: u64,
    pub replaced: u64,
    pub unchanged: u64,
    pub kept_newer: u64,
    pub rejected: u64,
}

impl Summary {
    fn imported(&self) -> u64 {
        self.created + self.replaced + self.unchanged
    }

    fn line(&self, dry_run: bool) -> String {
        if dry_run {
            format!(
                "dry run, nothing written: would import {} (create {}, replace {}, unchanged {}), keep newer {}, reject {}",
                self.imported(),
                self.created,
                self.replaced,
                self.unchanged,
                self.kept_newer,
                self.rejected
            )
        } else {
            format!(
                "imported {} (created {}, replaced {}, unchanged {}), kept newer {}, rejected {}",
                self.imported(),
                self.created,
                self.replaced,
                self.unchanged,
                self.kept_newer,
                self.rejected
            )
        }
    }
}

/// A rejected line as the report shows it. Never carries token values.
#[derive(Debug, Serialize)]
struct Reject {
    line: u64,
    error: &'static str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    integration: Option<String>,
}

/// One line read from the file.
enum RawLine {
    Text(Vec<u8>),
    TooLong,
}

/// Reads lines of at most [`MAX_LINE_BYTES`] without ever buffering more.
struct LineReader<R> {
    inner: R,
    offset: u64,
    number: u64,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// `(line number, offset after the line, line)`, `None` at the end.
    async fn next(&mut self) -> std::io::Result<Option<(u64, u64, RawLine)>> {
        let mut line = Vec::new();
        let mut too_long = false;
        let mut read_any = false;
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if !read_any {
                    return Ok(None);
                }
                break;
            }
            read_any = true;
            let newline = available.iter().position(|b| *b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            if !too_long {
                if line.len() + chunk.len() > MAX_LINE_BYTES {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let consumed = newline.map_or(available.len(), |at| at + 1);
            self.inner.consume(consumed);
            self.offset += consumed as u64;
            if newline.is_some() {
                break;
            }
        }
        self.number += 1;
        let raw = if too_long {
            RawLine::TooLong
        } else {
            RawLine::Text(line)
        };
        Ok(Some((self.number, self.offset, raw)))
    }
}

/// A line checked as far as can be done without the database.
enum Prepared {
    Blank,
    Rejected(Reject),
    Ready {
        line: u64,
        user: UserId,
        integration: IntegrationKey,
        grant: ImportedGrant,
    },
}

/// Checks done in line order, before any import runs.
struct Preparer {
    vault: Vault,
    /// First line of every (user, integration) seen, keyed by a hash so
    /// memory stays small on huge files.
    seen: HashMap<[u8; 16], u64>,
}

impl Preparer {
    fn prepare(&mut self, number: u64, raw: RawLine) -> Prepared {
        let reject = |error, reason: String| {
            Prepared::Rejected(Reject {
                line: number,
                error,
                reason,
                user_id: None,
                integration: None,
            })
        };
        let bytes = match raw {
            RawLine::TooLong => {
                return reject(
                    "line_too_long",
                    format!("the line is longer than {MAX_LINE_BYTES} bytes"),
                );
            }
            RawLine::Text(bytes) => bytes,
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return reject("invalid_utf8", "the line is not valid UTF-8".into());
        };
        let text = if number == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            &text
        };
        let text = text.trim();
        if text.is_empty() {
            return Prepared::Blank;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(err) => {
                return reject(
                    "invalid_json",
                    format!(
                        "invalid JSON: {}",
                        err.to_string().replace(" at line 1 column ", " at column ")
                    ),
                );
            }
        };
        let Value::Object(fields) = &value else {
            return reject(
                "invalid_json",
                format!("the line is {}, not a JSON object", json_kind(&value)),
            );
        };
        // For the report, whatever the line says about whose it is.
        let named = |field: &str| {
            fields
                .get(field)
                .and_then(Value::as_str)
                .map(|s| s.chars().take(200).collect::<String>())
        };
        let (user_id, integration) = (named("user_id"), named("integration"));
        let reject = |error, reason: String| {
            Prepared::Rejected(Reject {
                line: number,
                error,
                reason,
                user_id: user_id.clone(),
                integration: integration.clone(),
            })
        };
        let parsed: ImportLine = match serde_path_to_error::deserialize(value) {
            Ok(parsed) => parsed,
            Err(err) => return reject("invalid_json", err.to_string()),
        };
        let (raw_user, raw_integration, body) = parsed.split();
        let user = match UserId::parse(raw_user) {
            Ok(user) => user,
            Err(err) => return reject("invalid_user_id", format!("user_id: {err}")),
        };
        let key = match IntegrationKey::parse(raw_integration) {
            Ok(key) => key,
            Err(err) => return reject("invalid_integration", format!("integration: {err}")),
        };
        if self.vault.integrations().get(&key).is_none() {
            return reject(
                "unknown_integration",
                format!("no integration named {:?} is configured", key.as_str()),
            );
        }
        let mut hash = Sha256::new();
        hash.update(user.as_str());
        hash.update([0]);
        hash.update(key.as_str());
        let digest: [u8; 16] = hash.finalize()[..16].try_into().expect("16 bytes");
        if let Some(first) = self.seen.get(&digest) {
            return reject(
                "duplicate",
                format!(
                    "line {first} already names this user_id and integration; only the first line for a connection is imported"
                ),
            );
        }
        self.seen.insert(digest, number);
        match body.into_grant() {
            Ok(grant) => Prepared::Ready {
                line: number,
                user,
                integration: key,
                grant,
            },
            Err(invalid) => reject(invalid.code(), invalid.to_string()),
        }
    }
}

/// What became of one line.
enum Done {
    Blank,
    Imported {
        line: u64,
        action: ImportAction,
        last_refreshed_at: Option<DateTime<Utc>>,
    },
    Rejected(Reject),
    /// The database or the key ring failed: stop.
    Fatal {
        line: u64,
        error: anyhow::Error,
    },
    ReadFailed(std::io::Error),
}

async fn finish(vault: Vault, prepared: Prepared, options: ImportOptions) -> Done {
    let (line, user, integration, grant) = match prepared {
        Prepared::Blank => return Done::Blank,
        Prepared::Rejected(reject) => return Done::Rejected(reject),
        Prepared::Ready {
            line,
            user,
            integration,
            grant,
        } => (line, user, integration, grant),
    };
    let reject = |error, reason: String| {
        Done::Rejected(Reject {
            line,
            error,
            reason,
            user_id: Some(user.as_str().to_owned()),
            integration: Some(integration.as_str().to_owned()),
        })
    };
    match vault.import_with(&user, &integration, grant, options).await {
        Ok(outcome) => Done::Imported {
            line,
            action: outcome.action,
            last_refreshed_at: outcome.connection.last_refreshed_at,
        },
        Err(ImportError::Invalid(invalid)) => reject(invalid.code(), invalid.to_string()),
        Err(err @ ImportError::UnknownIntegration(_)) => {
            reject("unknown_integration", err.to_string())
        }
        Err(err @ ImportError::Busy) => reject("connection_busy", err.to_string()),
        Err(ImportError::Vault(err)) => Done::Fatal {
            line,
            error: anyhow::Error::new(err),
        },
    }
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::with_draw_target(Some(total), target),
            "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        ),
        None => (
            ProgressBar::with_draw_target(None, target),
            "{spinner} {bytes} read ({bytes_per_sec}) {msg}",
        ),
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// Runs the command; `Err(LinesRejected)` when it finished with rejects.
pub async fn run(config: &Config, args: ImportArgs) -> anyhow::Result<Summary> {
    let concurrency = args.concurrency.clamp(1, 64);
    let (input, total): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) =
        if args.file == Path::new("-") {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let file = tokio::fs::File::open(&args.file)
                .await
                .with_context(|| format!("cannot open {}", args.file.display()))?;
            let len = file.metadata().await.ok().map(|m| m.len());
            (Box::new(file), len)
        };
    let mut rejects = args
        .rejects
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .map(std::io::BufWriter::new)
                .with_context(|| format!("cannot create the rejects file {}", path.display()))
        })
        .transpose()?;

    let mut config = config.clone();
    // A dry run writes nothing, not even migrations.
    config.migrate_on_start &= !args.dry_run;
    let vault = crate::wiring::build_state(&config).await?.vault.clone();
    let options = ImportOptions {
        dry_run: args.dry_run,
        force: args.force,
    };

    let bar = progress_bar(total);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = LineReader {
        inner: BufReader::with_capacity(64 * 1024, input),
        offset: 0,
        number: 0,
    };
    let lines = futures::stream::unfold(
        (reader, Arc::clone(&stop)),
        |(mut reader, stop)| async move {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match reader.next().await {
                Ok(Some(line)) => Some((Ok(line), (reader, stop))),
                Ok(None) => None,
                Err(err) => {
                    stop.store(true, Ordering::Relaxed);
                    Some((Err(err), (reader, stop)))
                }
            }
        },
    );
    let mut preparer = Preparer {
        vault: vault.clone(),
        seen: HashMap::new(),
    };
    let results = lines
        .map(|read| {
            let vault = vault.clone();
            let prepared = read.map(|(number, end, raw)| (end, preparer.prepare(number, raw)));
            async move {
                match prepared {
                    Ok((end, prepared)) => (end, finish(vault, prepared, options).await),
                    Err(err) => (0, Done::ReadFailed(err)),
                }
            }
        })
        .buffered(concurrency);
    let mut results = pin!(results);

    let mut summary = Summary::default();
    let mut lines_done = 0u64;
    let mut fatal: Option<anyhow::Error> = None;
    while let Some((end, done)) = results.next().await {
        match done {
            Done::Blank => {}
            Done::Imported {
                line,
                action,
                last_refreshed_at,
            } => match action {
                ImportAction::Created => summary.created += 1,
                ImportAction::Replaced => summary.replaced += 1,
                ImportAction::Unchanged => summary.unchanged += 1,
                ImportAction::KeptNewer => {
                    summary.kept_newer += 1;
                    let at = last_refreshed_at
                        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default();
                    bar.suspend(|| {
                        eprintln!(
                            "line {line}: kept newer tokens: tokenvault refreshed this connection at {at}, after this export; --force replaces them"
                        )
                    });
                }
            },
            Done::Rejected(reject) => {
                summary.rejected += 1;
                bar.suspend(|| eprintln!("line {}: {}", reject.line, reject.reason));
                if let Some(out) = rejects.as_mut() {
                    serde_json::to_writer(&mut *out, &reject)
                        .map_err(std::io::Error::from)
                        .and_then(|()| out.write_all(b"\n"))
                        .context("writing the rejects file")?;
                }
            }
            Done::Fatal { line, error } => {
                stop.store(true, Ordering::Relaxed);
                if fatal.is_none() {
                    fatal = Some(error.context(format!("importing line {line}")));
                }
            }
            Done::ReadFailed(err) => {
                if fatal.is_none() {
                    fatal = Some(anyhow::Error::new(err).context(format!(
                        "reading {} after line {lines_done}",
                        args.file.display()
                    )));
                }
            }
        }
        if end > 0 {
            lines_done += 1;
            bar.set_position(end);
            bar.set_message(format!("{lines_done} lines"));
        }
    }
    bar.finish_and_clear();
    if let Some(out) = rejects.as_mut() {
        out.flush().context("writing the rejects file")?;
    }
    println!("{}", summary.line(args.dry_run));
    if let Some(err) = fatal {
        return Err(err.context(
            "the import stopped; every line reported above is done, and re-running the file is safe",
        ));
    }
    if summary.rejected > 0 {
        return Err(LinesRejected(summary.rejected).into());
    }
    Ok(summary)
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

    async fn read_all(input: &[u8]) -> Vec<(u64, u64, Option<Vec<u8>>)> {
        let mut reader = LineReader {
            inner: BufReader::with_capacity(16, input),
            offset: 0,
            number: 0,
        };
        let mut lines = Vec::new();
        while let Some((number, end, raw)) = reader.next().await.unwrap() {
            let text = match raw {
                RawLine::Text(text) => Some(text),
                RawLine::TooLong => None,
            };
            lines.push((number, end, text));
        }
        lines
    }

    #[tokio::test]
    async fn lines_are_read_with_offsets_and_a_length_cap() {
        let long = "x".repeat(MAX_LINE_BYTES + 1);
        let input = format!("first line spanning buffers\n\n{long}\nlast");
        let lines = read_all(input.as_bytes()).await;
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            (1, 28, Some(b"first line spanning buffers".to_vec()))
        );
        assert_eq!(lines[1], (2, 29, Some(Vec::new())));
        assert_eq!(lines[2], (3, 29 + long.len() as u64 + 1, None));
        assert_eq!(lines[3], (4, input.len() as u64, Some(b"last".to_vec())));
        assert!(read_all(b"").await.is_empty());
        assert_eq!(read_all(b"a\n").await.len(), 1, "no phantom last line");
    }
}
