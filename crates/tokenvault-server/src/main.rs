//! `tokenvault`: the service and its operator commands.

use tokenvault_server::app::{App, Overrides};
use tokenvault_server::{
    api_keys, bulk, config, config_check, connections, import, keys, providers_cli, wiring,
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
    /// Find, inspect, refresh and revoke users' connections.
    Connections {
        #[command(subcommand)]
        command: ConnectionsCommand,
    },
    /// The provider catalog (built-in entries and the providers_file's).
    Providers {
        #[command(subcommand)]
        command: ProvidersCommand,
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
enum ProvidersCommand {
    /// One line per catalog entry: client authentication, PKCE, refresh tokens, device flow.
    List {
        /// Every entry in full, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One entry in full, as JSON (what GET /v1/providers/{key} answers).
    Show {
        /// The catalog key, e.g. spotify.
        key: String,
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
enum ConnectionsCommand {
    /// List connections across users (every page), e.g. who needs re-auth.
    List {
        /// Only this status: connected, needs_reauth, expired, error, disconnected.
        #[arg(long)]
        status: Option<String>,
        /// Only this integration.
        #[arg(long)]
        integration: Option<String>,
        /// Only users whose id starts with this.
        #[arg(long, value_name = "PREFIX")]
        user_prefix: Option<String>,
        /// Print a JSON array (the API's shape) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one connection's status and its latest history entries.
    Show {
        user_id: String,
        integration: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Refresh a connection's tokens now.
    Refresh {
        user_id: String,
        integration: String,
    },
    /// Revoke a connection at the provider and erase its tokens.
    Revoke {
        user_id: String,
        integration: String,
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
        Command::Providers { command } => match command {
            ProvidersCommand::List { json } => providers_cli::list(&config, json),
            ProvidersCommand::Show { key } => providers_cli::show(&config, &key),
        },
        Command::ApiKeys { command } => match command {
            ApiKeysCommand::Create { name, scope } => api_keys::create(&config, &name, scope).await,
            ApiKeysCommand::List { json } => api_keys::list(&config, json).await,
            ApiKeysCommand::Revoke { id } => api_keys::revoke(&config, &id).await,
        },
        Command::Serve { bind } => serve(config, bind).await,
        Command::Connections { command } => match command {
            ConnectionsCommand::List {
                status,
                integration,
                user_prefix,
                json,
            } => {
                let args = connections::ListArgs {
                    status,
                    integration,
                    user_id_prefix: user_prefix,
                    json,
                };
                connections::list(&config, args).await
            }
            ConnectionsCommand::Show {
                user_id,
                integration,
                json,
            } => connections::show(&config, &user_id, &integration, json).await,
            ConnectionsCommand::Refresh {
                user_id,
                integration,
            } => connections::refresh(&config, &user_id, &integration).await,
            ConnectionsCommand::Revoke {
                user_id,
                integration,
            } => connections::revoke(&config, &user_id, &integration).await,
        },
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

async fn serve(mut config: Config, bind: Option<SocketAddr>) -> anyhow::Result<()> {
    if let Some(bind) = bind {
        config.bind = bind;
    }
    // The same validation as `config check`, before anything is written.
    let (_, report) = config_check::check(&config, |name| std::env::var(name).ok());
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    if !report.errors.is_empty() {
        anyhow::bail!(
            "the configuration has {} error(s) (`tokenvault config check` shows them with the effective configuration):\n  {}",
            report.errors.len(),
            report.errors.join("\n  ")
        );
    }
    let app = App::build(config, Overrides::default()).await?;
    eprintln!("tokenvault listening on http://{}", app.local_addr());
    if let Some(addr) = app.metrics_addr() {
        eprintln!("tokenvault metrics on http://{addr}/metrics");
    }
    print_next_steps(&app).await;
    app.run_until(shutdown_signal()).await.map(drop)
}

/// What a first run needs to hear: the redirect URI to register at each
/// provider, and the command for whatever is still missing.
async fn print_next_steps(app: &App) {
    let state = app.state();
    let public_url = app.config().public_url();
    for integration in state.integrations.all() {
        eprintln!(
            "integration {} ({}): register this redirect URI at the provider: {}",
            integration.key(),
            integration.spec().display_name,
            integration.redirect_uri()
        );
    }
    for pending in state.integrations.unavailable() {
        eprintln!(
            "integration {}: unavailable, its OIDC discovery failed ({}); retried in the background",
            pending.key, pending.error
        );
    }
    if state.integrations.is_empty() {
        eprintln!(
            "next: no integration is configured. Set a catalog provider's client id and secret and restart, e.g.\n  \
             SPOTIFY_CLIENT_ID=... SPOTIFY_CLIENT_SECRET=... tokenvault serve\n\
             (its redirect URI defaults to {}; GET /v1/providers lists the catalog)",
            tokenvault_server::integrations_env::default_redirect_uri(&public_url)
        );
    }
    let has_key = !app.config().api_keys.is_empty()
        || match wiring::open_api_key_store(app.config()).await {
            Ok(store) => store
                .list()
                .await
                .is_ok_and(|keys| keys.iter().any(|key| key.revoked_at.is_none())),
            Err(_) => true,
        };
    if !has_key {
        eprintln!(
            "next: no API key yet. Create one for your backend:\n  \
             tokenvault api-keys create --name backend --scope manage"
        );
    }
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
