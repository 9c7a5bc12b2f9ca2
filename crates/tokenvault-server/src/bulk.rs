//! `tokenvault bulk run|status|cancel`: bulk actions from the command line,
//! against the configured database (same configuration as `serve`).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokenvault::bulk::{BulkActionView, BulkSpecInput, BulkWorker, ItemState, RunEnd};

use crate::config::Config;
use crate::wiring;

/// `tokenvault bulk run --help`.
pub const HELP: &str = "\
Create a bulk action from a JSON file and run it in this process until every item is done,
with a progress bar (same configuration and database as `serve`).

SPEC.json is the body of POST /v1/bulk-actions:
  {\"integration\": \"spotify\",
   \"users\": [\"fan-1\", \"fan-2\"]  or  {\"status\": \"connected\"},
   \"request\": {\"method\": \"PUT\", \"path\": \"me/tracks\", \"query\": {\"ids\": \"4uLU6hMCjMI75M1A2tKUQC\"}},
   \"not_before\": \"2026-12-04T00:00:00Z\", \"rate_per_second\": 20}

Ctrl-C stops after the requests in flight are recorded; a running `serve` (or
`tokenvault bulk resume ID`) goes on with the rest. Exit status: 0 every item succeeded,
2 some items failed or were skipped (see GET /v1/bulk-actions/ID/items?state=failed),
1 the action could not run.";

/// Some items did not succeed (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} item(s) failed and {skipped} were skipped; list them with GET /v1/bulk-actions/{id}/items?state=failed (or state=skipped)"
)]
pub struct ItemsNotSucceeded {
    pub id: uuid::Uuid,
    pub failed: u64,
    pub skipped: u64,
}

pub async fn run(config: &Config, spec_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(spec_file)
        .with_context(|| format!("cannot read {}", spec_file.display()))?;
    let input: BulkSpecInput = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bulk action spec", spec_file.display()))?;
    let state = wiring::build_state(config).await?;
    let spec = state
        .bulk
        .parse(&input)
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let worker = BulkWorker::new(state.bulk.clone(), wiring::bulk_settings(config));
    let view = worker
        .create(spec)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    eprintln!("bulk action {} created: {} item(s)", view.id, view.total);
    drive(&state.bulk, worker, view.id).await
}

/// Takes over an action (once no other runner holds it) and runs it here.
pub async fn resume(config: &Config, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let state = wiring::build_state(config).await?;
    let worker = BulkWorker::new(state.bulk.clone(), wiring::bulk_settings(config));
    state
        .bulk
        .status(id)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    drive(&state.bulk, worker, id).await
}

async fn drive(
    actions: &tokenvault::bulk::BulkActions,
    worker: BulkWorker,
    id: uuid::Uuid,
) -> anyhow::Result<()> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    let record = actions
        .store()
        .get(id)
        .await?
        .context("the bulk action vanished")?;
    let held_by_other = record
        .lease_owner
        .as_deref()
        .is_some_and(|o| o != worker.owner())
        && record
            .lease_until
            .is_some_and(|until| until > actions.vault().clock().now());
    if held_by_other {
        eprintln!("another instance is running {id}; waiting for its lease to end");
    }
    let bar = progress_bar(record.total);
    let runner = tokio::spawn(async move { worker.run(id, stopping).await });
    let mut runner = std::pin::pin!(runner);
    let end = loop {
        tokio::select! {
            end = &mut runner => break end
                .context("the bulk runner panicked")?
                .map_err(|err| anyhow::anyhow!("{err}"))?,
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Ok(view) = actions.status(id).await {
                    update(&bar, &view);
                }
            }
        }
    };
    let view = actions
        .status(id)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    update(&bar, &view);
    bar.finish_and_clear();
    print_summary(&view);
    match end {
        RunEnd::Completed => {
            let failed = view.counts[&ItemState::Failed];
            let skipped = view.counts[&ItemState::Skipped];
            if failed + skipped > 0 {
                return Err(ItemsNotSucceeded {
                    id,
                    failed,
                    skipped,
                }
                .into());
            }
            Ok(())
        }
        RunEnd::Cancelled => anyhow::bail!("the bulk action was cancelled"),
        RunEnd::Stopped => anyhow::bail!(
            "stopped; the rest runs on a `serve` instance or with `tokenvault bulk resume {id}`"
        ),
        RunEnd::LeaseLost => anyhow::bail!("another instance took the bulk action over"),
    }
}

pub async fn status(config: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let state = wiring::build_state(config).await?;
    let view = state
        .bulk
        .status(id)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_summary(&view);
    }
    Ok(())
}

pub async fn cancel(config: &Config, id: &str) -> anyhow::Result<()> {
    let id = parse_id(id)?;
    let state = wiring::build_state(config).await?;
    let view = state
        .bulk
        .cancel(id)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    print_summary(&view);
    Ok(())
}

fn parse_id(raw: &str) -> anyhow::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(raw.trim()).with_context(|| format!("{raw:?} is not a bulk action id"))
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} items  {msg}").expect("valid template"),
    );
    bar
}

fn done(view: &BulkActionView) -> u64 {
    view.counts
        .iter()
        .filter(|(state, _)| state.is_final())
        .map(|(_, n)| n)
        .sum()
}

fn update(bar: &ProgressBar, view: &BulkActionView) {
    bar.set_position(done(view));
    bar.set_message(format!(
        "{} ok, {} failed, {} skipped, {:.1}/s{}",
        view.counts[&ItemState::Succeeded],
        view.counts[&ItemState::Failed],
        view.counts[&ItemState::Skipped],
        view.current_rate,
        view.eta_seconds
            .map(|s| format!(", ETA {s} s"))
            .unwrap_or_default()
    ));
}

fn print_summary(view: &BulkActionView) {
    println!(
        "bulk action {} ({}): {}",
        view.id, view.integration, view.state
    );
    println!(
        "  {} {}",
        view.request["method"].as_str().unwrap_or_default(),
        view.request["path"].as_str().unwrap_or_default()
    );
    let counts: Vec<String> = view
        .counts
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    println!(
        "  {} of {} done: {}",
        done(view),
        view.total,
        counts.join(", ")
    );
    println!(
        "  rate {:.1}/s (configured {}/s){}",
        view.current_rate,
        view.rate_per_second,
        view.eta_seconds
            .map(|s| format!(", ETA {s} s"))
            .unwrap_or_default()
    );
}
