//! `presave`: run a release's pre-save campaign. See README.md.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Parser;
use presave::{Campaign, Release, Settings, SpotifyApp};
use secrecy::SecretString;
use url::Url;

/// Saves a track to the Spotify library of every fan who connected Spotify
/// before the release, then confirms each save.
///
/// Exit status: 0 every connected fan's save was confirmed (fans who must
/// reconnect are skipped and listed), 1 some fan failed, 2 the campaign
/// could not run.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The Spotify track id (from open.spotify.com/track/<id>).
    #[arg(long)]
    track: String,
    /// The database the fans' connections are in.
    #[arg(
        long,
        env = "TOKENVAULT_DATABASE_URL",
        default_value = "sqlite://presave.db"
    )]
    database: String,
    /// The master keys the tokens are sealed with (`k1:BASE64`, from
    /// `tokenvault keys generate`).
    #[arg(long, env = "TOKENVAULT_MASTER_KEYS", hide_env_values = true)]
    master_keys: SecretString,
    /// A providers.toml overriding the built-in catalog (e.g. to point
    /// `spotify` at a test double).
    #[arg(long, env = "TOKENVAULT_PROVIDERS_FILE")]
    providers: Option<PathBuf>,
    #[arg(long, env = "SPOTIFY_CLIENT_ID")]
    client_id: String,
    #[arg(long, env = "SPOTIFY_CLIENT_SECRET", hide_env_values = true)]
    client_secret: SecretString,
    /// The redirect URI registered at Spotify (used by the connect flow).
    #[arg(
        long,
        env = "SPOTIFY_REDIRECT_URI",
        default_value = "http://127.0.0.1:8080/oauth/spotify/callback"
    )]
    redirect_uri: Url,
    /// Saves per second across all fans.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Send nothing before this time (RFC 3339, e.g. 2026-12-04T00:00:00Z).
    #[arg(long)]
    not_before: Option<DateTime<Utc>>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,presave=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(report) => {
            print!("{report}");
            if report.failed() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("presave: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<presave::Report> {
    let settings = Settings {
        database_url: args.database,
        master_keys: args.master_keys,
        providers_file: args.providers,
        spotify: SpotifyApp {
            client_id: args.client_id,
            client_secret: args.client_secret,
            redirect_uri: args.redirect_uri,
        },
    };
    let campaign = Campaign::open(&settings).await?;
    // Ctrl-C lets the requests in flight finish and record their outcome.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop.send(true);
        }
        // The bulk runner reads a dropped sender as "stopping" on every
        // turn; keep it alive for the life of the process.
        std::future::pending::<()>().await;
        drop(stop);
    });
    let release = Release {
        rate_per_second: args.rate,
        concurrency: args.concurrency,
        not_before: args.not_before,
        ..Release::new(args.track)
    };
    campaign.release(&release, stopping).await
}
