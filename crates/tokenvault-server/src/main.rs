//! `tokenvault`: the service and its operator commands.

use tokenvault_server::{
    api_keys, bulk, config, config_check, http, import, keys, metrics, wiring,
};

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use config::{Config, LogFormat};
use tokenvault::api_keys::Scope;

/// mimalloc instead of the system allocator: a token read makes dozens of
/// small allocations, and B1 (docs/benchmarks.md) measured its ratio to the
/// HTTP floor at 0.66–0.68 with glibc's malloc and 0.72–0.81 with mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tokenvault",
    version,
    about = "Keeps your users' third-party OAuth tokens valid: flows, encrypted storage, refresh.",
    long_about = "Keeps your users' third-party OAuth tokens valid: runs the OAuth flows, stores \
tokens encrypted, refreshes them before they expire (once across all instances), and hands \
your backend a valid access token over HTTP.\n\n\
Configuration: defaults < tokenvault.toml (or --config) < TOKENVAULT_* environment variables \
and <KEY>_CLIENT_ID / _CLIENT_SECRET / _REDIRECT_URI per integration. \
`tokenvault config check` shows the result.",
    after_help = "Start here: `tokenvault serve` runs the service on an embedded SQLite database in ./data."
)]
struct Cli {
    /// Configuration file (TOML). Default: ./tokenvault.toml if present.
    #[arg(long, global = true, env = "TOKENVAULT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (migrates the database first unless migrate_on_start = false).
    Serve {
        /// Address to listen on (overrides `bind` / TOKENVAULT_BIND).
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Manage master keys (the key-encryption keys every token is sealed under).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage API keys for the /v1 API (stored hashed in the database).
    #[command(name = "api-keys")]
    ApiKeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Bulk actions: one provider API request for many users.
    Bulk {
        #[command(subcommand)]
        command: BulkCommand,
    },
    /// Import tokens from a legacy store: a JSONL file, one connection per line.
    #[command(long_about = import::HELP)]
    Import {
        /// The JSONL file (`-` reads standard input).
        file: PathBuf,
        /// Also write rejected lines to this file, as JSONL {line, error, reason, user_id?, integration?}.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
        /// Check every line and compare it with the database; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace connections even where tokenvault holds newer, refreshed tokens.
        #[arg(long)]
        force: bool,
        /// Lines imported at the same time.
        #[arg(long, default_value_t = import::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
    },
}

#[derive(Subcommand)]
enum ApiKeysCommand {
    /// Create a key and print it once (alone on stdout); only its hash is stored.
    Create {
        /// What the key is for, e.g. "billing backend" (1-64 characters).
        #[arg(long)]
        name: String,
        /// read-tokens: read tokens and statuses; manage: also connect, refresh,
        /// revoke; admin: also import connections and reset integrations.
        #[arg(long, value_parser = parse_scope)]
        scope: Scope,
    },
    /// List keys (id, scope, state, created, last used, name); never the keys themselves.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; every instance refuses it within seconds.
    Revoke {
        /// The key's id, as `api-keys list` shows it (the 12 hex characters after `tvk_`).
        id: String,
    },
}

#[derive(Subcommand)]
enum BulkCommand {
    /// Create a bulk action from SPEC.json and run it here with a progress bar.
    #[command(long_about = bulk::HELP)]
    Run {
        /// The action, as the body of POST /v1/bulk-actions.
        spec: PathBuf,
    },
    /// Run an existing action here (e.g. after `bulk run` was stopped).
    Resume {
        /// The bulk action's id.
        id: String,
    },
    /// Show an action's progress: items by state, rate, ETA.
    Status {
        /// The bulk action's id.
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cancel an action: pending items are never sent.
    Cancel {
        /// The bulk action's id.
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration with secrets masked; exit 1 if it has errors.
    Check,
}

fn parse_scope(raw: &str) -> Result<Scope, String> {
    raw.parse()
        .map_err(|err: tokenvault::api_keys::UnknownScope| err.to_string())
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random master key as `id:base64`.
    Generate {
        /// Key id (default: k<timestamp>).
        #[arg(long)]
        id: Option<String>,
    },
    /// Re-wrap every data key under the active (first) master key; resumable, safe while serving.
    Rotate {
        /// Rows per batch.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
    /// Remove a master key; refused while any connection still uses it.
    Retire {
        /// The key id to retire.
        id: String,
    },
    /// Show the key ring and how many connections each key wraps.
    Status,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Finished, but not every line went in: scripts must notice.
        Err(err)
            if err.downcast_ref::<import::LinesRejected>().is_some()
                || err.downcast_ref::<bulk::ItemsNotSucceeded>().is_some() =>
        {
            eprintln!("error: {err}");
            std::process::ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    init_tracing(config.log_format);
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => check_config(&config),
        Command::ApiKeys { command } => match command {
            ApiKeysCommand::Create { name, scope } => api_keys::create(&config, &name, scope).await,
            ApiKeysCommand::List { json } => api_keys::list(&config, json).await,
            ApiKeysCommand::Revoke { id } => api_keys::revoke(&config, &id).await,
        },
        Command::Serve { bind } => serve(config, bind).await,
        Command::Bulk { command } => match command {
            BulkCommand::Run { spec } => bulk::run(&config, &spec).await,
            BulkCommand::Resume { id } => bulk::resume(&config, &id).await,
            BulkCommand::Status { id, json } => bulk::status(&config, &id, json).await,
            BulkCommand::Cancel { id } => bulk::cancel(&config, &id).await,
        },
        Command::Migrate => {
            let store = wiring::open_store(&config).await?;
            store.migrate().await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Keys { command } => match command {
            KeysCommand::Generate { id } => keys::generate(id),
            KeysCommand::Rotate { batch } => keys::rotate(&config, batch).await,
            KeysCommand::Retire { id } => keys::retire(&config, &id).await,
            KeysCommand::Status => keys::status(&config).await,
        },
        Command::Import {
            file,
            rejects,
            dry_run,
            force,
            concurrency,
        } => {
            let args = import::ImportArgs {
                file,
                rejects,
                dry_run,
                force,
                concurrency: usize::from(concurrency),
            };
            import::run(&config, args).await.map(drop)
        }
    }
}

fn check_config(config: &Config) -> anyhow::Result<()> {
    let (effective, report) = config_check::check(config, |name| std::env::var(name).ok());
    println!("# effective configuration (secrets masked)");
    print!("{}", toml::to_string_pretty(&effective)?);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for error in &report.errors {
        eprintln!("error: {error}");
    }
    if !report.errors.is_empty() {
        anyhow::bail!("the configuration has {} error(s)", report.errors.len());
    }
    eprintln!("configuration OK");
    Ok(())
}

async fn serve(config: Config, bind: Option<SocketAddr>) -> anyhow::Result<()> {
    // Before the state is built: start-up already sets integration gauges.
    let recorder = config.metrics_bind.map(|bind| (bind, metrics::install()));
    let state = wiring::build_state(&config).await?;
    let addr = bind.unwrap_or(config.bind);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, integrations = state.integrations.len(), "listening");
    eprintln!("tokenvault listening on http://{local}");
    let metrics = match recorder {
        Some((bind, handle)) => {
            let server = metrics::start(bind, handle, &state)
                .await
                .with_context(|| format!("cannot listen for metrics on {bind}"))?;
            tracing::info!(addr = %server.addr(), "metrics listening");
            eprintln!("tokenvault metrics on http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    let poller = wiring::spawn_device_poller(&state);
    let purger =
        wiring::spawn_state_purger(state.states.clone(), std::time::Duration::from_secs(60));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let scheduler = wiring::spawn_scheduler(&state, &config, stopping.clone());
    let bulk = wiring::spawn_bulk_worker(&state, &config, stopping.clone());
    let webhooks = wiring::spawn_webhooks(&state, &config, stopping.clone())?;
    let vault = state.vault.clone();
    let mut http_stopping = stopping.clone();
    let mut served = tokio::spawn(tokenvault_server::listener::serve(
        listener,
        http::router(state),
        tokenvault_server::listener::ConnectionLimits::from_config(&config),
        async move {
            let _ = http_stopping.wait_for(|stop| *stop).await;
        },
    ));
    // Until a signal, or the server failing on its own.
    let early_exit = tokio::select! {
        () = shutdown_signal() => None,
        result = &mut served => Some(result),
    };
    // From here on the shutdown is bounded: background work stops taking
    // new work at once (claimed rows not yet at a provider are given back),
    // requests and provider calls in flight get `shutdown_grace_secs` to
    // finish and store their outcome, and then the process exits anyway.
    let grace = std::time::Duration::from_secs(config.shutdown_grace_secs);
    tracing::info!(grace_secs = grace.as_secs(), "stopping");
    let _ = stop.send(true);
    let finishing = async {
        poller.shutdown().await;
        for task in scheduler.into_iter().chain(bulk).chain(webhooks) {
            let _ = task.await;
        }
        if early_exit.is_none() {
            let _ = (&mut served).await;
        }
    };
    if tokio::time::timeout(grace, finishing).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "shutdown grace over; exiting with work still in flight (leases of unresolved provider calls stay until they expire, journaled answers are stored at the next start)"
        );
    }
    // Answers the database refused are kept on disk in the journal (R5).
    if !vault.drain_journal().await {
        tracing::warn!(
            "exiting with refreshed tokens not yet stored; the refresh journal keeps them for the next start"
        );
    }
    purger.abort();
    if let Some(metrics) = metrics {
        metrics.shutdown().await;
    }
    if let Some(result) = early_exit {
        result??;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
