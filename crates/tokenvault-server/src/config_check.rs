//! `tokenvault config check`: the effective configuration, secrets masked,
//! and every problem `serve` would stop on (errors) or an operator should
//! know about (warnings) — without touching the network or writing files.

use secrecy::ExposeSecret;
use tokenvault::crypto::KeyRing;
use toml::{Table, Value};
use url::Url;

use crate::config::Config;
use crate::http::FlowSettings;
use crate::wiring;

/// What is printed in place of a secret that is set.
pub const MASK: &str = "********";

#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Validates `config` as `serve` would and renders it for printing.
/// `env` reads the per-integration variables (`<KEY>_CLIENT_ID`, …).
pub fn check(config: &Config, env: impl Fn(&str) -> Option<String>) -> (Table, Report) {
    let mut report = Report::default();
    check_file(config, &mut report);
    report.warnings.extend(crate::config_keys::unknown_env_keys(
        std::env::vars().filter(|(name, _)| name.starts_with("TOKENVAULT_")),
    ));
    check_master_keys(config, &mut report);
    if let Err(err) = Url::parse(&config.database_url())
        .map_err(|e| e.to_string())
        .and_then(|url| match url.scheme() {
            "sqlite" | "postgres" | "postgresql" => Ok(()),
            other => Err(format!("unsupported scheme {other:?}")),
        })
    {
        report.errors.push(format!(
            "database_url: {err}; use sqlite://PATH or postgres://USER@HOST:PORT/DB"
        ));
    }
    if let Some(redis) = &config.redis_url {
        match Url::parse(redis) {
            Ok(url) if matches!(url.scheme(), "redis" | "rediss") => {}
            _ => report
                .errors
                .push("redis_url: not a redis:// or rediss:// URL".into()),
        }
    }
    if let Err(err) = crate::http::pages::Theme::from_config(config) {
        report.errors.push(err.to_string());
    }
    let integrations = match wiring::load_catalog(config) {
        Ok(catalog) => match crate::integrations_env::integrations_config(config, &catalog, &env) {
            Ok(integrations) => Some(integrations),
            Err(err) => {
                report.errors.push(format!("integrations: {err:#}"));
                None
            }
        },
        Err(err) => {
            report.errors.push(format!("{err:#}"));
            None
        }
    };
    if let Err(err) = FlowSettings::from_config(config) {
        report.errors.push(format!("{err:#}"));
    }
    if let Err(err) = wiring::events(config) {
        report.errors.push(format!("{err:#}"));
    }
    if config.request_timeout_secs <= 25 {
        report.warnings.push(format!(
            "request_timeout_secs = {} cuts off token requests that wait for another instance's refresh (up to 25 s)",
            config.request_timeout_secs
        ));
    }
    if config.token_cache_ms > 60_000 {
        report.warnings.push(format!(
            "token_cache_ms = {}: another instance's refresh or disconnect is seen here only that much later; keep it to a few seconds",
            config.token_cache_ms
        ));
    }
    if config.is_production() {
        if config
            .public_url
            .as_ref()
            .is_none_or(|url| url.scheme() != "https")
        {
            report.warnings.push(
                "public_url is not an https URL; browsers reach connect links and callbacks through it".into(),
            );
        }
        if config.log_salt.is_none() {
            report.warnings.push(
                "log_salt is unset: each process hashes user ids in logs under its own random key, so logs of different instances do not correlate".into(),
            );
        }
        if config
            .webhook_url
            .as_ref()
            .is_some_and(|url| url.scheme() != "https")
        {
            report
                .warnings
                .push("webhook_url is not https: events would travel in clear text".into());
        }
    }
    if integrations
        .as_ref()
        .is_some_and(|i| i.integrations.is_empty())
    {
        report.warnings.push(
            "no integrations configured: set <KEY>_CLIENT_ID (e.g. SPOTIFY_CLIENT_ID) or add [integrations.<key>]".into(),
        );
    }
    (render(config, integrations.as_ref()), report)
}

/// The file's own keys and values: unknown keys and the example's
/// placeholders are errors (figment ignores unknown keys, so a typo would
/// silently keep a default).
fn check_file(config: &Config, report: &mut Report) {
    let Some(path) = &config.source_file else {
        return;
    };
    let file = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| text.parse::<Table>().map_err(|e| e.to_string()));
    match file {
        Ok(file) => {
            let name = path.display();
            for error in crate::config_keys::unknown_file_keys(&file)
                .into_iter()
                .chain(crate::config_keys::placeholders(&file))
            {
                report.errors.push(format!("{name}: {error}"));
            }
        }
        Err(err) => report
            .errors
            .push(format!("config file {}: {err}", path.display())),
    }
}

fn check_master_keys(config: &Config, report: &mut Report) {
    if let Some(spec) = &config.master_keys {
        if let Err(err) = KeyRing::parse(spec.expose_secret(), "TOKENVAULT_MASTER_KEYS") {
            report.errors.push(err.to_string());
        }
        return;
    }
    let path = config.master_key_file();
    match std::fs::read_to_string(&path) {
        Ok(content) => {
            if let Err(err) = KeyRing::parse(&content, &path.display().to_string()) {
                report.errors.push(err.to_string());
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if config.is_production() {
                report.errors.push(format!(
                    "production requires master keys: set TOKENVAULT_MASTER_KEYS or create {}",
                    path.display()
                ));
            } else {
                report.warnings.push(format!(
                    "no master key yet: serve will generate a development key in {}",
                    path.display()
                ));
            }
        }
        Err(err) => report
            .errors
            .push(format!("master_key_file {}: {err}", path.display())),
    }
}

fn secret(set: bool) -> Value {
    Value::String(if set { MASK.into() } else { String::new() })
}

/// A URL with its password (if any) masked.
fn masked_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some(MASK));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        // An unparsable URL may still carry a password: show only its scheme.
        Err(_) => format!("{}:{MASK}", raw.split(':').next().unwrap_or_default()),
    }
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

fn int(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

/// Every setting, by name, as the service will use it. Written out field by
/// field (rather than serialized) so that a new secret field can never be
/// printed by accident.
fn render(
    config: &Config,
    integrations: Option<&tokenvault::integrations::IntegrationsConfig>,
) -> Table {
    let mut t = Table::new();
    let mut put = |key: &str, value: Value| {
        t.insert(key.to_owned(), value);
    };
    put(
        "environment",
        Value::String(
            if config.is_production() {
                "production"
            } else {
                "development"
            }
            .into(),
        ),
    );
    put("bind", Value::String(config.bind.to_string()));
    put("public_url", Value::String(config.public_url().to_string()));
    put(
        "data_dir",
        Value::String(config.data_dir.display().to_string()),
    );
    put(
        "database_url",
        Value::String(masked_url(&config.database_url())),
    );
    put(
        "database_max_connections",
        int(config.database_max_connections),
    );
    put("migrate_on_start", Value::Boolean(config.migrate_on_start));
    put("master_keys", secret(config.master_keys.is_some()));
    put(
        "master_key_file",
        Value::String(config.master_key_file().display().to_string()),
    );
    put(
        "log_format",
        Value::String(format!("{:?}", config.log_format).to_lowercase()),
    );
    put("log_salt", secret(config.log_salt.is_some()));
    put(
        "api_keys",
        Value::Array(config.api_keys.iter().map(|_| secret(true)).collect()),
    );
    put(
        "redis_url",
        Value::String(
            config
                .redis_url
                .as_deref()
                .map(masked_url)
                .unwrap_or_default(),
        ),
    );
    put("state_ttl_secs", int(config.state_ttl_secs));
    put(
        "allowed_redirect_origins",
        strings(&config.allowed_redirect_origins),
    );
    put(
        "connect_ui",
        Value::String(format!("{:?}", config.connect_ui).to_lowercase()),
    );
    put("ui_app_name", Value::String(config.ui_app_name.clone()));
    let url_or_empty =
        |url: &Option<Url>| Value::String(url.as_ref().map(Url::to_string).unwrap_or_default());
    put("ui_logo_url", url_or_empty(&config.ui_logo_url));
    put(
        "ui_accent_color",
        Value::String(config.ui_accent_color.clone()),
    );
    put("ui_support_url", url_or_empty(&config.ui_support_url));
    put(
        "providers_file",
        Value::String(
            config
                .providers_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    );
    put(
        "webhook_url",
        Value::String(
            config
                .webhook_url
                .as_ref()
                .map(Url::to_string)
                .unwrap_or_default(),
        ),
    );
    put("webhook_secret", secret(config.webhook_secret.is_some()));
    put("webhook_events", strings(&config.webhook_events));
    put(
        "scheduler_enabled",
        Value::Boolean(config.scheduler_enabled),
    );
    put("scheduler_tick_ms", int(config.scheduler_tick_ms));
    put("scheduler_batch", int(config.scheduler_batch));
    put("scheduler_concurrency", int(config.scheduler_concurrency));
    put("token_cache_ms", int(config.token_cache_ms));
    put(
        "refresh_rate_limit_per_second",
        int(config.refresh_rate_limit_per_second),
    );
    put("retention_days", int(config.retention_days));
    put("history_retention_days", int(config.history_retention_days));
    put(
        "breaker_failure_threshold",
        int(config.breaker_failure_threshold),
    );
    put("breaker_open_secs", int(config.breaker_open_secs));
    put(
        "breaker_success_threshold",
        int(config.breaker_success_threshold),
    );
    put("max_body_bytes", int(config.max_body_bytes));
    put("request_timeout_secs", int(config.request_timeout_secs));
    put(
        "header_read_timeout_secs",
        int(config.header_read_timeout_secs),
    );
    put("keep_alive_idle_secs", int(config.keep_alive_idle_secs));
    put("max_connections", int(config.max_connections));
    put(
        "proxy_max_retry_after_secs",
        int(config.proxy_max_retry_after_secs),
    );
    put("bulk_enabled", Value::Boolean(config.bulk_enabled));
    put("bulk_concurrency", int(config.bulk_concurrency));
    put("bulk_max_items", int(config.bulk_max_items));
    put(
        "metrics_bind",
        Value::String(
            config
                .metrics_bind
                .map_or_else(|| "off".into(), |addr| addr.to_string()),
        ),
    );
    let mut tables = Table::new();
    for (key, integration) in integrations.map(|i| &i.integrations).into_iter().flatten() {
        let mut entry = Table::new();
        entry.insert(
            "provider".into(),
            Value::String(integration.provider.clone()),
        );
        entry.insert(
            "client_id".into(),
            Value::String(integration.client_id.clone()),
        );
        match &integration.client_secrets {
            Some(list) => {
                entry.insert(
                    "client_secrets".into(),
                    Value::Array(list.iter().map(|_| secret(true)).collect()),
                );
            }
            None => {
                entry.insert(
                    "client_secret".into(),
                    secret(integration.client_secret.is_some()),
                );
            }
        }
        if let Some(uri) = &integration.redirect_uri {
            entry.insert("redirect_uri".into(), Value::String(uri.to_string()));
        }
        if let Some(scopes) = &integration.scopes {
            entry.insert("scopes".into(), strings(scopes));
        }
        if let Some(issuer) = &integration.issuer {
            entry.insert("issuer".into(), Value::String(issuer.to_string()));
        }
        if !integration.authorize_params.is_empty() {
            entry.insert(
                "authorize_params".into(),
                Value::Table(
                    integration
                        .authorize_params
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                ),
            );
        }
        if let Some(rate) = integration.rate_limit_per_second {
            entry.insert("rate_limit_per_second".into(), int(rate));
        }
        tables.insert(key.to_string(), Value::Table(entry));
    }
    t.insert("integrations".into(), Value::Table(tables));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            masked_url("postgres://tv:hunter2@db:5432/tokenvault"),
            format!("postgres://tv:{MASK}@db:5432/tokenvault")
        );
        assert_eq!(masked_url("redis://cache:6379"), "redis://cache:6379");
        assert!(!masked_url("postgres://tv:hunter2@[bad").contains("hunter2"));
    }
}
