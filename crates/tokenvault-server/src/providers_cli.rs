//! `tokenvault providers …`: the provider catalog (built-in entries plus
//! the configured `providers_file`), and `docs/providers.md`, generated
//! from the built-in catalog.

use std::fmt::Write as _;

use anyhow::bail;
use tokenvault::providers::Catalog;

use crate::config::Config;
use crate::http::ProviderDetail;
use crate::wiring;

/// `tokenvault providers list`: one line per entry.
pub fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let catalog = wiring::load_catalog(config)?;
    let entries = entries(&catalog);
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    println!(
        "{:<24}  {:<26}  {:<19}  {:<8}  {:<8}  device",
        "key", "name", "client auth", "pkce", "refresh"
    );
    for entry in &entries {
        println!(
            "{:<24}  {:<26}  {:<19}  {:<8}  {:<8}  {}",
            entry.key,
            entry.display_name,
            entry.token_auth_method.as_deref().unwrap_or("discovery"),
            pkce(entry),
            refresh(entry),
            if entry.device_authorization_url.is_some() {
                "yes"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// `tokenvault providers show KEY`: the entry in full, as JSON (what
/// `GET /v1/providers/{key}` answers).
pub fn show(config: &Config, key: &str) -> anyhow::Result<()> {
    let catalog = wiring::load_catalog(config)?;
    let Some(entry) = ProviderDetail::find(&catalog, key) else {
        bail!("no catalog entry {key:?}; `tokenvault providers list` lists them");
    };
    println!("{}", serde_json::to_string_pretty(&entry)?);
    Ok(())
}

fn entries(catalog: &Catalog) -> Vec<ProviderDetail> {
    let mut entries: Vec<ProviderDetail> = catalog
        .iter()
        .map(|(_, spec)| ProviderDetail::of(spec))
        .chain(catalog.pending_discovery().map(ProviderDetail::discovered))
        .collect();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

fn pkce(entry: &ProviderDetail) -> &'static str {
    match entry.pkce {
        Some(tokenvault::providers::Pkce::Required) => "required",
        Some(tokenvault::providers::Pkce::Supported) => "yes",
        Some(tokenvault::providers::Pkce::Unsupported) => "no",
        None => "",
    }
}

fn refresh(entry: &ProviderDetail) -> &'static str {
    match (entry.refresh_tokens, entry.refresh_token_rotates) {
        (Some(true), Some(true)) => "rotating",
        (Some(true), _) => "yes",
        (Some(false), _) => "no",
        (None, _) => "",
    }
}

/// `docs/providers.md`: every built-in entry, generated (a test fails when
/// the file is stale; `UPDATE_DOCS=1` rewrites it).
pub fn markdown(catalog: &Catalog) -> String {
    let entries = entries(catalog);
    let mut out = String::from(
        "# Provider catalog\n\n\
         Generated from `crates/tokenvault/providers.toml` (the documentation each entry was \
         checked against is linked in a comment above it there) by \
         `UPDATE_DOCS=1 cargo test -p tokenvault-server --lib providers_md`. \
         `tokenvault providers list|show KEY` and `GET /v1/providers/{key}` show the same, \
         with a `providers_file`'s entries too.\n\n",
    );
    let _ = writeln!(
        out,
        "{} entries.\n\n| key | name | client auth | PKCE | refresh tokens | device flow | revocation |\n|---|---|---|---|---|---|---|",
        entries.len()
    );
    for e in &entries {
        let _ = writeln!(
            out,
            "| [`{key}`](#{key}) | {name} | {auth} | {pkce} | {refresh} | {device} | {revoke} |",
            key = e.key,
            name = e.display_name,
            auth = e
                .token_auth_method
                .as_deref()
                .map_or("discovered".to_owned(), |m| format!("`{m}`")),
            pkce = pkce(e),
            refresh = refresh(e),
            device = if e.device_authorization_url.is_some() {
                "yes"
            } else {
                ""
            },
            revoke = e.revocation_style.as_deref().unwrap_or(""),
        );
    }
    for e in &entries {
        let _ = write!(out, "\n## {}\n\n", e.key);
        let _ = write!(out, "**{}**", e.display_name);
        if let Some(alias) = &e.alias_of {
            let _ = write!(out, " — inherits from [`{alias}`](#{alias})");
        }
        out.push_str("\n\n");
        if e.discovery {
            out.push_str(
                "OpenID Connect by discovery: the endpoints, client authentication and PKCE come \
                 from the issuer's `/.well-known/openid-configuration` (set `issuer` on the \
                 integration).\n",
            );
            continue;
        }
        let line = |out: &mut String, label: &str, value: Option<String>| {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                let _ = writeln!(out, "- {label}: {value}");
            }
        };
        let url = |u: &Option<String>| u.as_ref().map(|u| format!("`{u}`"));
        line(&mut out, "authorization", url(&e.authorization_url));
        line(&mut out, "token", url(&e.token_url));
        if e.refresh_url != e.token_url {
            line(&mut out, "refresh", url(&e.refresh_url));
        }
        line(&mut out, "revocation", url(&e.revocation_url));
        line(
            &mut out,
            "device authorization",
            url(&e.device_authorization_url),
        );
        line(&mut out, "profile", url(&e.userinfo_url));
        line(
            &mut out,
            "API base (proxy, bulk actions)",
            url(&e.api_base_url),
        );
        line(
            &mut out,
            "issuer",
            e.issuer.as_ref().map(|i| format!("`{i}`")),
        );
        line(
            &mut out,
            "client authentication",
            e.token_auth_method.as_ref().map(|m| format!("`{m}`")),
        );
        line(&mut out, "PKCE", Some(pkce(e).to_owned()));
        line(
            &mut out,
            "refresh tokens",
            Some(
                match refresh(e) {
                    "rotating" => "yes, rotated on every refresh (the new one is stored before the old is dropped)",
                    "yes" => "yes, not rotated",
                    _ => "no (the access token lasts until revoked, or the user connects again)",
                }
                .to_owned(),
            ),
        );
        if e.refresh_sends_scope == Some(true) {
            line(
                &mut out,
                "refresh requests",
                Some("carry the granted scopes".into()),
            );
        }
        line(
            &mut out,
            "default scopes",
            (!e.default_scopes.is_empty()).then(|| {
                e.default_scopes
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        );
        line(
            &mut out,
            "authorization parameters",
            (!e.authorize_params.is_empty()).then(|| {
                e.authorize_params
                    .iter()
                    .map(|(k, v)| format!("`{k}={v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        );
        line(
            &mut out,
            "assumed lifetime without `expires_in`",
            e.default_expires_in_secs.map(|s| format!("{s} s")),
        );
        let pairs = |map: &std::collections::BTreeMap<String, String>, sep: &str| {
            (!map.is_empty()).then(|| {
                map.iter()
                    .map(|(k, v)| format!("`{k}{sep}{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        };
        line(
            &mut out,
            "code exchange parameters",
            pairs(&e.exchange_params, "="),
        );
        line(
            &mut out,
            "token request headers",
            pairs(&e.token_headers, ": "),
        );
        line(
            &mut out,
            "API token header",
            e.api_auth_header
                .as_ref()
                .map(|h| format!("`{h}: <access token>`")),
        );
        line(&mut out, "API headers", pairs(&e.api_headers, ": "));
        line(
            &mut out,
            "kept from the token response",
            e.token_metadata.as_ref().map(|pointers| {
                if pointers.is_empty() {
                    "nothing".to_owned()
                } else {
                    pointers
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            }),
        );
        line(
            &mut out,
            "kept from the ID token",
            (!e.id_token_claims.is_empty()).then(|| {
                e.id_token_claims
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        );
        if !e.connection_params.is_empty() {
            out.push_str(
                "
| connection parameter | from | pattern | example | what it is |
|---|---|---|---|---|
",
            );
            for p in &e.connection_params {
                let from = match p.source.as_str() {
                    "session" => "`connection_params` of the connect session".to_owned(),
                    "callback" => {
                        format!("the callback's `{}`", p.query.as_deref().unwrap_or(&p.name))
                    }
                    "token_response" => format!(
                        "the token response at `{}`{}",
                        p.pointer.as_deref().unwrap_or_default(),
                        if p.extract_host { " (its host)" } else { "" }
                    ),
                    _ => format!(
                        "`{}` at `{}`",
                        p.request.as_deref().unwrap_or_default(),
                        p.pointer.as_deref().unwrap_or_default()
                    ),
                };
                let _ = writeln!(
                    out,
                    "| `{}` | {from} | `{}` | `{}` | {} |",
                    p.name,
                    p.pattern.replace('|', "\\|"),
                    p.example,
                    p.description
                );
            }
        }
        if !e.scope_descriptions.is_empty() {
            out.push_str("\n| scope | what the Connect UI says |\n|---|---|\n");
            for (scope, words) in &e.scope_descriptions {
                let _ = writeln!(out, "| `{scope}` | {words} |");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_md_is_generated_from_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/providers.md");
        let generated = markdown(&Catalog::builtin());
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/providers.md is stale: run `UPDATE_DOCS=1 cargo test -p tokenvault-server --lib providers_md`"
        );
        for key in Catalog::builtin().keys() {
            assert!(generated.contains(&format!("\n## {key}\n")), "{key}");
        }
    }
}
