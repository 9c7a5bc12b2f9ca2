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

mod lines;
mod reader;

use std::collections::HashMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokenvault::import::{ImportAction, ImportOptions};
use tokio::io::BufReader;

use crate::config::Config;
use lines::{Done, Preparer, finish};
use reader::LineReader;

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
