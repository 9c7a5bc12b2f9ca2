//! The server's integration policy: which integrations the environment
//! enables, and the `<PREFIX>_CLIENT_ID`, `<PREFIX>_CLIENT_SECRET` and
//! `<PREFIX>_REDIRECT_URI` overlay on the file's `[integrations.<key>]`
//! (PREFIX = [`IntegrationKey::env_prefix`], `google-mail` → `GOOGLE_MAIL`).
//! The library validates and resolves what this produces.

use secrecy::SecretString;
use tokenvault::domain::IntegrationKey;
use tokenvault::integrations::{IntegrationConfig, IntegrationConfigError, IntegrationsConfig};
use tokenvault::providers::Catalog;
use url::Url;

use crate::config::Config;

/// The integrations `serve` runs: the file's, plus every catalog provider
/// whose `<PREFIX>_CLIENT_ID` is set, with the environment overlaid and
/// the whole validated against the public URL and the environment's
/// production rules. `env` is usually `|name| std::env::var(name).ok()`.
pub fn integrations_config(
    config: &Config,
    catalog: &Catalog,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<IntegrationsConfig> {
    let mut integrations = config.integrations.clone();
    for key in catalog.keys() {
        let Ok(key) = IntegrationKey::parse(key) else {
            continue;
        };
        if !integrations.contains_key(&key)
            && env(&format!("{}_CLIENT_ID", key.env_prefix())).is_some()
        {
            integrations.insert(
                key.clone(),
                IntegrationConfig {
                    provider: key.as_str().to_owned(),
                    ..Default::default()
                },
            );
        }
    }
    for (key, integration) in &mut integrations {
        apply_env(integration, key, &env)?;
    }
    let integrations = IntegrationsConfig { integrations };
    integrations.validate(Some(&config.public_url()), config.is_production())?;
    Ok(integrations)
}

/// Overlays `<PREFIX>_CLIENT_ID`, `<PREFIX>_CLIENT_SECRET` and
/// `<PREFIX>_REDIRECT_URI` on the file values: the environment wins. Unset
/// and empty (or blank) variables are ignored.
fn apply_env(
    integration: &mut IntegrationConfig,
    key: &IntegrationKey,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), IntegrationConfigError> {
    let prefix = key.env_prefix();
    let get = |suffix: &str| {
        let name = format!("{prefix}_{suffix}");
        env(&name)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name, v))
    };
    if let Some((_, v)) = get("CLIENT_ID") {
        integration.client_id = v.trim().to_owned();
    }
    if let Some((_, v)) = get("CLIENT_SECRET") {
        integration.client_secret = Some(SecretString::from(v));
    }
    if let Some((name, v)) = get("REDIRECT_URI") {
        let url = Url::parse(v.trim()).map_err(|e| IntegrationConfigError::Invalid {
            variable: name,
            message: format!("must be an absolute URL ({e})"),
        })?;
        integration.redirect_uri = Some(url);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret as _;

    use super::*;

    fn key(raw: &str) -> IntegrationKey {
        IntegrationKey::parse(raw).unwrap()
    }

    fn from_file(provider: &str) -> IntegrationConfig {
        IntegrationConfig {
            provider: provider.into(),
            client_id: "cid".into(),
            client_secret: Some("csecret".into()),
            redirect_uri: Some(Url::parse("https://file.example/cb").unwrap()),
            ..IntegrationConfig::default()
        }
    }

    #[test]
    fn env_overlay_wins_over_the_file() {
        let mut cfg = from_file("google");
        let env: HashMap<&str, &str> = HashMap::from([
            ("GOOGLE_MAIL_CLIENT_ID", " env-id "),
            ("GOOGLE_MAIL_CLIENT_SECRET", "env-secret"),
            ("GOOGLE_MAIL_REDIRECT_URI", "https://env.example/cb"),
            ("GOOGLE_CLIENT_ID", "wrong-prefix"),
        ]);
        apply_env(&mut cfg, &key("google-mail"), |n| {
            env.get(n).map(|v| (*v).to_owned())
        })
        .unwrap();
        assert_eq!(cfg.client_id, "env-id");
        assert_eq!(cfg.client_secret.unwrap().expose_secret(), "env-secret");
        assert_eq!(cfg.redirect_uri.unwrap().as_str(), "https://env.example/cb");

        // Unset and empty variables leave the file values alone.
        let mut cfg = from_file("google");
        apply_env(&mut cfg, &key("google-mail"), |n| {
            (n == "GOOGLE_MAIL_CLIENT_ID").then(|| "  ".to_owned())
        })
        .unwrap();
        assert_eq!(cfg.client_id, "cid");
        assert_eq!(
            cfg.redirect_uri.unwrap().as_str(),
            "https://file.example/cb"
        );

        // A relative redirect URI names the variable.
        let mut cfg = from_file("spotify");
        let err = apply_env(&mut cfg, &key("spotify"), |n| {
            (n == "SPOTIFY_REDIRECT_URI").then(|| "/oauth/callback".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("SPOTIFY_REDIRECT_URI: must be an absolute URL"),
            "{err}"
        );
    }

    #[test]
    fn a_client_id_in_the_environment_enables_a_catalog_provider() {
        let catalog = Catalog::builtin();
        let config = Config {
            public_url: Some(Url::parse("https://app.example.com").unwrap()),
            ..Config::default()
        };
        let env = HashMap::from([
            ("DISCORD_CLIENT_ID", "d-id"),
            ("DISCORD_CLIENT_SECRET", "d-secret"),
            (
                "DISCORD_REDIRECT_URI",
                "https://app.example.com/oauth/callback",
            ),
        ]);
        let integrations =
            integrations_config(&config, &catalog, |n| env.get(n).map(|v| (*v).to_owned()))
                .unwrap();
        let discord = &integrations.integrations[&key("discord")];
        assert_eq!(discord.provider, "discord");
        assert_eq!(discord.client_id, "d-id");
        assert_eq!(integrations.integrations.len(), 1, "nothing else enabled");
        // Without the variable, nothing is enabled.
        let none = integrations_config(&config, &catalog, |_| None).unwrap();
        assert!(none.integrations.is_empty());
    }
}
