//! The server's integration policy: which integrations the environment
//! enables, and the `<PREFIX>_CLIENT_ID`, `<PREFIX>_CLIENT_SECRET` and
//! `<PREFIX>_REDIRECT_URI` overlay on the file's `[integrations.<key>]`
//! (PREFIX = [`IntegrationKey::env_prefix`], `google-mail` → `GOOGLE_MAIL`).
//! The library validates and resolves what this produces.

use std::collections::BTreeMap;

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
    let mut redirect_sources: BTreeMap<IntegrationKey, Source> = integrations
        .iter()
        .filter(|(_, integration)| integration.redirect_uri.is_some())
        .map(|(key, _)| (key.clone(), Source::File))
        .collect();
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
    // Ready entries and the ones resolved by OIDC discovery (`oidc`).
    let known = || {
        catalog
            .keys()
            .chain(catalog.pending_discovery().map(|p| p.key.as_str()))
    };
    for (key, integration) in &integrations {
        let provider = integration.provider.trim();
        if !provider.is_empty() && !known().any(|known| known == provider) {
            let hint = crate::config_keys::suggest(provider, known())
                .map(|near| format!(" (did you mean `{near}`?)"))
                .unwrap_or_default();
            anyhow::bail!(
                "integrations.{key}.provider: unknown provider `{provider}`{hint}; GET /v1/providers lists the catalog"
            );
        }
    }
    let public_url = config.public_url();
    for (key, integration) in &mut integrations {
        if apply_env(integration, key, &env)? {
            redirect_sources.insert(key.clone(), Source::Env);
        }
        if integration.redirect_uri.is_none() {
            integration.redirect_uri = Some(default_redirect_uri(&public_url));
            redirect_sources.insert(key.clone(), Source::Default);
        }
    }
    let integrations = IntegrationsConfig { integrations };
    integrations
        .validate(Some(&public_url), config.is_production())
        .map_err(|err| name_the_source(err, &redirect_sources, config))?;
    Ok(integrations)
}

/// Where an integration's redirect URI came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    File,
    Env,
    Default,
}

/// `{public_url}/oauth/callback`: the route every integration shares.
pub fn default_redirect_uri(public_url: &Url) -> Url {
    public_url
        .join("oauth/callback")
        .expect("a base URL joins a relative path")
}

/// The library names the environment variable in every redirect-URI error;
/// say where the value really came from, and where the public URL did.
fn name_the_source(
    err: IntegrationConfigError,
    sources: &BTreeMap<IntegrationKey, Source>,
    config: &Config,
) -> IntegrationConfigError {
    let IntegrationConfigError::Invalid { variable, message } = err else {
        return err;
    };
    let Some((key, source)) = sources
        .iter()
        .find(|(key, _)| variable == format!("{}_REDIRECT_URI", key.env_prefix()))
    else {
        return IntegrationConfigError::Invalid { variable, message };
    };
    let variable = match source {
        Source::Env => format!("{variable} (environment)"),
        Source::File => format!("integrations.{key}.redirect_uri (config file)"),
        Source::Default => format!(
            "integrations.{key}.redirect_uri (not set: defaults to {{public_url}}/oauth/callback)"
        ),
    };
    let message = if message.contains("public URL") && config.public_url.is_none() {
        format!(
            "{message}; the public URL defaults to http://<bind> ({}): set public_url (TOKENVAULT_PUBLIC_URL) to the address browsers reach tokenvault at, or `serve --bind`",
            config.public_url()
        )
    } else {
        message
    };
    IntegrationConfigError::Invalid { variable, message }
}

/// Overlays `<PREFIX>_CLIENT_ID`, `<PREFIX>_CLIENT_SECRET` (one secret, or
/// a comma-separated rotation list) and
/// `<PREFIX>_REDIRECT_URI` on the file values: the environment wins. Unset
/// and empty (or blank) variables are ignored. True when the redirect URI
/// came from the environment.
fn apply_env(
    integration: &mut IntegrationConfig,
    key: &IntegrationKey,
    env: impl Fn(&str) -> Option<String>,
) -> Result<bool, IntegrationConfigError> {
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
        // A comma-separated list is a rotation: the secrets in the order
        // to try them (client_secrets).
        if v.contains(',') {
            integration.client_secret = None;
            integration.client_secrets = Some(
                v.split(',')
                    .map(|secret| SecretString::from(secret.trim().to_owned()))
                    .collect(),
            );
        } else {
            integration.client_secret = Some(SecretString::from(v));
            integration.client_secrets = None;
        }
    }
    let Some((name, v)) = get("REDIRECT_URI") else {
        return Ok(false);
    };
    let url = Url::parse(v.trim()).map_err(|e| IntegrationConfigError::Invalid {
        variable: format!("{name} (environment)"),
        message: format!("must be an absolute URL ({e})"),
    })?;
    integration.redirect_uri = Some(url);
    Ok(true)
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
    fn a_comma_separated_client_secret_is_a_rotation_list() {
        let mut cfg = from_file("google");
        let env = |name: &str| {
            (name == "GOOGLE_CLIENT_SECRET").then(|| " new-secret , old-secret ".to_owned())
        };
        apply_env(&mut cfg, &key("google"), env).unwrap();
        assert!(
            cfg.client_secret.is_none(),
            "the file's single secret is replaced"
        );
        let list: Vec<String> = cfg
            .client_secrets
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.expose_secret().to_owned())
            .collect();
        assert_eq!(list, ["new-secret", "old-secret"]);
        assert_eq!(cfg.client_secret_list(&key("google")).unwrap().len(), 2);
        // An empty entry is refused, naming the setting.
        let mut bad = from_file("google");
        apply_env(&mut bad, &key("google"), |name: &str| {
            (name == "GOOGLE_CLIENT_SECRET").then(|| "new,,old".to_owned())
        })
        .unwrap();
        let err = bad
            .client_secret_list(&key("google"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("integrations.google.client_secrets:"),
            "{err}"
        );
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
            err.starts_with("SPOTIFY_REDIRECT_URI (environment): must be an absolute URL"),
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

    fn spotify_redirect(integrations: &IntegrationsConfig) -> String {
        integrations.integrations[&key("spotify")]
            .redirect_uri
            .as_ref()
            .unwrap()
            .to_string()
    }

    #[test]
    fn client_id_and_secret_are_enough_the_redirect_uri_follows_the_public_url() {
        let catalog = Catalog::builtin();
        let env = HashMap::from([
            ("SPOTIFY_CLIENT_ID", "s-id"),
            ("SPOTIFY_CLIENT_SECRET", "s-secret"),
        ]);
        let get = |n: &str| env.get(n).map(|v| (*v).to_owned());
        let on = |bind: &str| Config {
            bind: bind.parse().unwrap(),
            ..Config::default()
        };
        let integrations = integrations_config(&on("127.0.0.1:19100"), &catalog, get).unwrap();
        assert_eq!(
            spotify_redirect(&integrations),
            "http://127.0.0.1:19100/oauth/callback"
        );
        // A wildcard bind is not an address a browser opens.
        let integrations = integrations_config(&on("0.0.0.0:8080"), &catalog, get).unwrap();
        assert_eq!(
            spotify_redirect(&integrations),
            "http://localhost:8080/oauth/callback"
        );
        let public = Config {
            public_url: Some(Url::parse("https://vault.example.com/base/").unwrap()),
            ..Config::default()
        };
        let integrations = integrations_config(&public, &catalog, get).unwrap();
        assert_eq!(
            spotify_redirect(&integrations),
            "https://vault.example.com/base/oauth/callback"
        );
    }

    #[test]
    fn redirect_uri_errors_name_where_the_value_came_from() {
        let catalog = Catalog::builtin();
        let mut config = Config {
            bind: "127.0.0.1:19100".parse().unwrap(),
            ..Config::default()
        };
        let mut peer = from_file("spotify");
        peer.redirect_uri = Some(Url::parse("http://127.0.0.1:8080/oauth/callback").unwrap());
        config.integrations.insert(key("peer"), peer);
        let err = integrations_config(&config, &catalog, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("integrations.peer.redirect_uri (config file): must be on the public URL's origin http://127.0.0.1:19100"),
            "{err}"
        );
        assert!(err.contains("set public_url"), "{err}");
        assert!(!err.contains("PEER_REDIRECT_URI"), "{err}");

        let err = integrations_config(&config, &catalog, |n| {
            (n == "PEER_REDIRECT_URI").then(|| "http://127.0.0.1:1/oauth/callback".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("PEER_REDIRECT_URI (environment): must be on the public URL's origin"),
            "{err}"
        );
    }
}
