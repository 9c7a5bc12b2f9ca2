//! The campaign against a fake Spotify that rotates refresh tokens, rejects
//! stale access tokens with 401 and answers every 20th API call with 429.

use std::collections::HashMap;

use chrono::{Duration, Utc};
use fake_spotify::{FakeSpotify, Options};
use presave::{Campaign, Outcome, Release, Settings, SpotifyApp, Stage};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use tokenvault::crypto::{KeyId, MasterKey};
use tokenvault::domain::{
    AccessToken, ConnectionStatus, RefreshToken, Scopes, TokenSet, TokenType, UserId,
};
use tokio::sync::watch;

const TRACK: &str = "4uLU6hMCjMI75M1A2tKUQC";

/// A fake Spotify and a campaign database pointed at it.
struct World {
    fake: FakeSpotify,
    settings: Settings,
    _dir: tempfile::TempDir,
}

async fn world(options: Options) -> World {
    let fake = FakeSpotify::start(options).await;
    let dir = tempfile::tempdir().unwrap();
    let providers = dir.path().join("providers.toml");
    std::fs::write(&providers, fake.providers_toml()).unwrap();
    let key = MasterKey::generate(KeyId::parse("k1").unwrap());
    let settings = Settings {
        database_url: format!("sqlite://{}", dir.path().join("presave.db").display()),
        master_keys: SecretString::from(key.to_spec().as_str().to_owned()),
        providers_file: Some(providers),
        spotify: SpotifyApp {
            client_id: fake.options().client_id.clone(),
            client_secret: SecretString::from(fake.options().client_secret.clone()),
            redirect_uri: "http://127.0.0.1:8080/oauth/spotify/callback"
                .parse()
                .unwrap(),
        },
    };
    World {
        fake,
        settings,
        _dir: dir,
    }
}

/// How a fan's grant looks on release day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fan {
    /// Connected, access token still valid.
    Fresh,
    /// The access token expired in the vault: refreshed before the save.
    Expired,
    /// The vault thinks the token is fine but Spotify answers 401: refreshed
    /// after the first try.
    Stale,
    /// The fan revoked the app at Spotify: the fake never issued these
    /// tokens, so the API says 401 and the refresh `invalid_grant`.
    Revoked,
    /// Spotify rejects the access token and the grant has no refresh token,
    /// so nothing newer can be had: the save fails with 401.
    Unrefreshable,
}

/// Stores the fan's grant as tokenvault's connect flow would have.
async fn connect(world: &World, campaign: &Campaign, user: &str, fan: Fan) {
    let (access, refresh) = match fan {
        Fan::Revoked => (format!("at.{user}.0"), format!("rt.{user}.0")),
        _ => world.fake.seed(user),
    };
    if matches!(fan, Fan::Stale | Fan::Unrefreshable) {
        world.fake.mark_stale(user);
    }
    let now = Utc::now();
    let tokens = TokenSet {
        access_token: AccessToken::new(access),
        refresh_token: (fan != Fan::Unrefreshable).then(|| RefreshToken::new(refresh)),
        token_type: TokenType::Bearer,
        scopes: Scopes::parse("user-library-modify user-library-read", " "),
        expires_at: Some(if fan == Fan::Expired {
            now - Duration::minutes(10)
        } else {
            now + Duration::hours(1)
        }),
    };
    campaign
        .vault()
        .save_grant(
            &UserId::parse(user).unwrap(),
            campaign.integration(),
            &tokens,
            json!({}),
            Duration::minutes(5),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connected_fan_gets_the_track_saved_once_and_confirmed() {
    let world = world(Options {
        rate_limit_every: Some(20),
        ..Options::default()
    })
    .await;
    let campaign = Campaign::open(&world.settings).await.unwrap();

    // 300 fans: 20 expired, 20 stale, 5 revoked, the rest fresh, spread
    // over the action so they meet 429s and each other in any order.
    let fans: Vec<(String, Fan)> = (0..300)
        .map(|i| {
            let kind = match (i % 15, i % 60) {
                (0, _) => Fan::Expired,
                (1, _) => Fan::Stale,
                (_, 7) => Fan::Revoked,
                _ => Fan::Fresh,
            };
            (format!("fan-{i:03}"), kind)
        })
        .collect();
    let count = |kind: Fan| fans.iter().filter(|(_, k)| *k == kind).count();
    assert_eq!(
        (count(Fan::Expired), count(Fan::Stale), count(Fan::Revoked)),
        (20, 20, 5),
        "the test's own set-up"
    );
    for (user, kind) in &fans {
        connect(&world, &campaign, user, *kind).await;
    }

    let release = Release {
        rate_per_second: 50.0,
        ..Release::new(TRACK)
    };
    // Held, not dropped: the runner stops when the sender goes away.
    let (_stop, stopping) = watch::channel(false);
    let report = campaign.release(&release, stopping).await.unwrap();

    // One outcome per fan, and the counts add up.
    assert_eq!(report.fans.len(), 300);
    assert_eq!(
        (report.confirmed(), report.failed(), report.skipped()),
        (295, 0, 5),
        "{report}"
    );
    let saves = world.fake.save_calls();
    for (user, kind) in &fans {
        let outcome = report
            .outcome(user)
            .unwrap_or_else(|| panic!("{user} missing"));
        if *kind == Fan::Revoked {
            assert_eq!(
                outcome,
                &Outcome::Skipped {
                    reason: "needs_reauth".into()
                },
                "{user}"
            );
            assert!(!saves.contains_key(user), "{user} was saved");
            let connection = campaign
                .vault()
                .connection(&UserId::parse(user).unwrap(), campaign.integration())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(connection.status, ConnectionStatus::NeedsReauth, "{user}");
        } else {
            assert_eq!(outcome, &Outcome::Confirmed, "{user}");
            // Exactly once, even though some of its sends met a 429 or a
            // 401 first.
            assert_eq!(saves.get(user), Some(&1), "{user}");
            assert!(world.fake.has_saved(user, TRACK), "{user}");
        }
        // One refresh for each fan whose token needed one, none otherwise.
        let refreshes = if matches!(kind, Fan::Expired | Fan::Stale) {
            1
        } else {
            0
        };
        assert_eq!(world.fake.refreshes(user), refreshes, "{user} ({kind:?})");
    }
    assert_eq!(saves.len(), 295, "nobody else was saved");
    assert_eq!(world.fake.replayed_refresh_tokens(), 0);
    // The 429 path was exercised, not just configured.
    assert!(
        world.fake.statuses().get(&429).copied().unwrap_or(0) > 0,
        "{:?}",
        world.fake.statuses()
    );
}

/// The binary: configuration from the environment, the per-fan report on
/// stdout, and exit status 1 when a fan failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_every_fan_and_fails_when_one_failed() {
    let world = world(Options::default()).await;
    {
        // Seeded through the library, as the connect flow would; closed
        // before the binary opens the same database.
        let campaign = Campaign::open(&world.settings).await.unwrap();
        for (user, kind) in [
            ("fan-a", Fan::Fresh),
            ("fan-b", Fan::Stale),
            ("fan-gone", Fan::Revoked),
            ("fan-rejected", Fan::Unrefreshable),
        ] {
            connect(&world, &campaign, user, kind).await;
        }
    }

    let settings = &world.settings;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_presave"))
        .args(["--track", TRACK, "--rate", "50"])
        .env("TOKENVAULT_DATABASE_URL", &settings.database_url)
        .env(
            "TOKENVAULT_MASTER_KEYS",
            settings.master_keys.expose_secret(),
        )
        .env(
            "TOKENVAULT_PROVIDERS_FILE",
            settings.providers_file.as_ref().unwrap(),
        )
        .env("SPOTIFY_CLIENT_ID", &settings.spotify.client_id)
        .env(
            "SPOTIFY_CLIENT_SECRET",
            settings.spotify.client_secret.expose_secret(),
        )
        .env_remove("SPOTIFY_REDIRECT_URI")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let lines: HashMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .collect();
    assert_eq!(lines.get("fan-a"), Some(&"saved, confirmed"), "{stdout}");
    assert_eq!(lines.get("fan-b"), Some(&"saved, confirmed"), "{stdout}");
    assert!(
        lines["fan-gone"].starts_with("skipped: needs_reauth"),
        "{stdout}"
    );
    assert!(
        lines["fan-rejected"].starts_with(&format!(
            "FAILED at {}: unauthorized (HTTP 401)",
            Stage::Save
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("4 fans, 2 saved and confirmed, 1 failed, 1 skipped"),
        "{stdout}"
    );
    let saves = world.fake.save_calls();
    assert_eq!(saves.get("fan-a"), Some(&1));
    assert_eq!(saves.get("fan-b"), Some(&1));
    assert_eq!(saves.len(), 2, "{saves:?}");
}
