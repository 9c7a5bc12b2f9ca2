//! Resolving a raw entry into a [`ProviderSpec`]: aliases flattened,
//! defaults applied, every URL and field validated.

use std::collections::BTreeMap;
use std::time::Duration;

use url::{Host, Url};

use super::raw::*;
use super::*;

pub(super) fn invalid(key: &str, field: &str, message: impl Into<String>) -> CatalogError {
    CatalogError::Invalid {
        key: key.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Validation helpers
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UrlPolicy {
    /// Built-in entries.
    HttpsOnly,
    /// User files: the operator's explicit choice (e.g. an internal IdP).
    AllowHttp,
    /// Values read from the network (discovery metadata).
    HttpsOrLoopback,
}

pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

pub(super) fn parse_url(value: &str, policy: UrlPolicy) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| e.to_string())?;
    match url.scheme() {
        "https" => {}
        "http" => match policy {
            UrlPolicy::AllowHttp => {}
            UrlPolicy::HttpsOrLoopback if is_loopback(&url) => {}
            UrlPolicy::HttpsOrLoopback => {
                return Err(format!(
                    "`{value}` must use https (http only for loopback hosts)"
                ));
            }
            UrlPolicy::HttpsOnly => {
                return Err(format!("`{value}` must use https in the built-in catalog"));
            }
        },
        other => return Err(format!("`{value}` has unsupported scheme `{other}`")),
    }
    if url.host().is_none() {
        return Err(format!("`{value}` has no host"));
    }
    if url.fragment().is_some() {
        return Err(format!("`{value}` must not contain a fragment"));
    }
    Ok(url)
}

pub(super) fn url_field(
    key: &str,
    field: &str,
    value: &str,
    policy: UrlPolicy,
) -> Result<Url, CatalogError> {
    parse_url(value, policy).map_err(|m| invalid(key, field, m))
}

/// Optional URL: absent or empty string (a user file removing an inherited
/// value) is `None`.
pub(super) fn opt_url_field(
    key: &str,
    field: &str,
    value: Option<&str>,
    policy: UrlPolicy,
) -> Result<Option<Url>, CatalogError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => url_field(key, field, v, policy).map(Some),
    }
}

pub(super) fn required_url_field(
    key: &str,
    field: &str,
    value: Option<&str>,
    policy: UrlPolicy,
) -> Result<Url, CatalogError> {
    opt_url_field(key, field, value, policy)?.ok_or_else(|| invalid(key, field, "missing"))
}

pub(super) fn issuer_field(
    key: &str,
    value: Option<&str>,
    policy: UrlPolicy,
) -> Result<Option<String>, CatalogError> {
    let Some(url) = opt_url_field(key, "issuer", value, policy)? else {
        return Ok(None);
    };
    if url.query().is_some() {
        return Err(invalid(key, "issuer", "must not contain a query"));
    }
    Ok(value.map(str::to_owned))
}

pub(super) fn check_pointer(key: &str, field: &str, pointer: &str) -> Result<(), CatalogError> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(invalid(
            key,
            field,
            format!("`{pointer}` is not a JSON pointer (must start with '/')"),
        ))
    }
}

pub(super) fn profile_pointers(
    key: &str,
    field: &str,
    pointers: Option<&JsonPointers>,
) -> Result<Vec<String>, CatalogError> {
    let pointers = pointers.map(|p| p.0.clone()).unwrap_or_default();
    for p in &pointers {
        check_pointer(key, field, p)?;
    }
    Ok(pointers)
}

pub(super) fn check_params(
    key: &str,
    field: &str,
    params: &BTreeMap<String, String>,
    reserved: &[&str],
) -> Result<(), CatalogError> {
    for name in params.keys() {
        if name.is_empty() {
            return Err(invalid(key, field, "empty parameter name"));
        }
        if reserved.contains(&name.as_str()) {
            return Err(invalid(
                key,
                field,
                format!("`{name}` is set by tokenvault and cannot be overridden"),
            ));
        }
    }
    Ok(())
}

/// Headers a catalog entry may never set: the transport's, and the ones
/// tokenvault sets itself.
const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "cookie",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-authorization",
];

fn check_headers(
    key: &str,
    field: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(), CatalogError> {
    for (name, value) in headers {
        let parsed = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid(key, field, format!("`{name}` is not a header name")))?;
        if FORBIDDEN_HEADERS.contains(&parsed.as_str()) {
            return Err(invalid(
                key,
                field,
                format!("`{name}` is set by tokenvault"),
            ));
        }
        let filled = value.replace("{client_id}", "client");
        if reqwest::header::HeaderValue::from_str(&filled).is_err() {
            return Err(invalid(
                key,
                field,
                format!("the value of `{name}` is not a header value"),
            ));
        }
    }
    Ok(())
}

pub(super) fn check_key(key: &str) -> Result<(), CatalogError> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            "key",
            "must be non-empty lowercase ASCII letters, digits, '-' or '_'",
        ))
    }
}

// ---------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------

pub(super) enum Resolved {
    Ready(Box<ProviderSpec>),
    Pending(Box<PendingDiscovery>),
}

/// Flatten the alias chain of `key`: returns the merged raw entry (root
/// first, `key` last, `alias` cleared) and the first alias hop.
pub(super) fn flatten_alias(
    raw: &RawCatalog,
    key: &str,
) -> Result<(RawProvider, Option<String>), CatalogError> {
    let mut chain = vec![key.to_owned()];
    let mut current = &raw.providers[key];
    while let Some(target) = current.alias.as_deref() {
        if chain.iter().any(|k| k == target) {
            chain.push(target.to_owned());
            return Err(CatalogError::AliasCycle {
                key: key.to_owned(),
                chain,
            });
        }
        let Some(next) = raw.providers.get(target) else {
            let from = chain.last().cloned().unwrap_or_else(|| key.to_owned());
            return Err(CatalogError::UnknownAlias {
                key: from,
                target: target.to_owned(),
            });
        };
        chain.push(target.to_owned());
        current = next;
    }
    let mut merged = RawProvider::default();
    for k in chain.iter().rev() {
        merged.overlay(&raw.providers[k]);
    }
    merged.alias = None;
    Ok((merged, chain.get(1).cloned()))
}

pub(super) fn resolve_entry(
    key: &str,
    raw: RawProvider,
    alias_of: Option<String>,
    policy: UrlPolicy,
) -> Result<Resolved, CatalogError> {
    check_key(key)?;

    if raw.discovery.unwrap_or(false) {
        // Validate what is there now so mistakes surface at start-up.
        let issuer = opt_url_field(key, "issuer", raw.issuer.as_deref(), policy)?;
        for (field, value) in [
            ("authorization_url", &raw.authorization_url),
            ("token_url", &raw.token_url),
            ("refresh_url", &raw.refresh_url),
            ("revocation_url", &raw.revocation_url),
            ("device_authorization_url", &raw.device_authorization_url),
            ("userinfo_url", &raw.userinfo_url),
            ("api_base_url", &raw.api_base_url),
        ] {
            opt_url_field(key, field, value.as_deref(), policy)?;
        }
        return Ok(Resolved::Pending(Box::new(PendingDiscovery {
            key: key.to_owned(),
            alias_of,
            issuer,
            overrides: raw,
        })));
    }

    let display_name = match raw.display_name.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => return Err(invalid(key, "display_name", "missing")),
    };

    let brand_color = match raw.brand_color.as_deref() {
        None => None,
        Some(color)
            if color.len() == 7
                && color.starts_with('#')
                && color[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some(color.to_ascii_lowercase())
        }
        Some(_) => return Err(invalid(key, "brand_color", "not a colour like #1db954")),
    };

    let authorization_url = required_url_field(
        key,
        "authorization_url",
        raw.authorization_url.as_deref(),
        policy,
    )?;
    let token_url = required_url_field(key, "token_url", raw.token_url.as_deref(), policy)?;
    let refresh_url = opt_url_field(key, "refresh_url", raw.refresh_url.as_deref(), policy)?
        .unwrap_or_else(|| token_url.clone());
    let revocation_url =
        opt_url_field(key, "revocation_url", raw.revocation_url.as_deref(), policy)?;
    let device_authorization_url = opt_url_field(
        key,
        "device_authorization_url",
        raw.device_authorization_url.as_deref(),
        policy,
    )?;
    let userinfo_url = opt_url_field(key, "userinfo_url", raw.userinfo_url.as_deref(), policy)?;
    let api_base_url = opt_url_field(key, "api_base_url", raw.api_base_url.as_deref(), policy)?;
    let issuer = issuer_field(key, raw.issuer.as_deref(), policy)?;

    let revocation_style = raw.revocation_style.unwrap_or(if revocation_url.is_some() {
        RevocationStyle::Rfc7009
    } else {
        RevocationStyle::None
    });
    match (revocation_style, &revocation_url) {
        (RevocationStyle::None, Some(_)) => {
            return Err(invalid(
                key,
                "revocation_style",
                "`none` but revocation_url is set",
            ));
        }
        (RevocationStyle::Rfc7009 | RevocationStyle::GithubGrant, None) => {
            return Err(invalid(
                key,
                "revocation_url",
                "required by the revocation_style",
            ));
        }
        (RevocationStyle::GithubGrant, Some(_))
            if !raw
                .revocation_url
                .as_deref()
                .is_some_and(|u| u.contains(CLIENT_ID_PLACEHOLDER)) =>
        {
            return Err(invalid(
                key,
                "revocation_url",
                "`github_grant` needs the `{client_id}` placeholder",
            ));
        }
        _ => {}
    }

    let iss_parameter_supported = raw.iss_parameter_supported.unwrap_or(false);
    if iss_parameter_supported && issuer.is_none() {
        return Err(invalid(key, "iss_parameter_supported", "requires issuer"));
    }

    let scope_separator = raw
        .scope_separator
        .clone()
        .unwrap_or_else(|| " ".to_owned());
    if scope_separator.is_empty() {
        return Err(invalid(key, "scope_separator", "must not be empty"));
    }
    let default_scopes = raw.default_scopes.clone().unwrap_or_default();
    for scope in &default_scopes {
        if scope.is_empty()
            || scope.chars().any(char::is_whitespace)
            || scope.contains(scope_separator.as_str())
        {
            return Err(invalid(
                key,
                "default_scopes",
                format!("`{scope}` is not a single scope"),
            ));
        }
    }

    let authorize_params = raw.authorize_params.clone().unwrap_or_default();
    check_params(
        key,
        "authorize_params",
        &authorize_params,
        RESERVED_AUTHORIZE_PARAMS,
    )?;
    let refresh_params = raw.refresh_params.clone().unwrap_or_default();
    check_params(
        key,
        "refresh_params",
        &refresh_params,
        RESERVED_REFRESH_PARAMS,
    )?;

    let exchange_params = raw.exchange_params.clone().unwrap_or_default();
    check_params(
        key,
        "exchange_params",
        &exchange_params,
        &[
            "grant_type",
            "code",
            "redirect_uri",
            "code_verifier",
            "client_id",
            "client_secret",
        ],
    )?;
    let token_headers = raw.token_headers.clone().unwrap_or_default();
    check_headers(key, "token_headers", &token_headers)?;
    let api_headers = raw.api_headers.clone().unwrap_or_default();
    check_headers(key, "api_headers", &api_headers)?;
    let api_auth_header = match raw.api_auth_header.as_deref() {
        None | Some("") => None,
        Some(name) => {
            let parsed =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(
                        key,
                        "api_auth_header",
                        format!("`{name}` is not a header name"),
                    )
                })?;
            if parsed == reqwest::header::AUTHORIZATION {
                None
            } else {
                if FORBIDDEN_HEADERS.contains(&parsed.as_str()) {
                    return Err(invalid(
                        key,
                        "api_auth_header",
                        format!("`{name}` cannot carry the token"),
                    ));
                }
                Some(parsed.as_str().to_owned())
            }
        }
    };

    let client_id_param = match raw.client_id_param.as_deref() {
        None | Some("client_id") | Some("") => None,
        Some(name)
            if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !RESERVED_AUTHORIZE_PARAMS.contains(&name)
                && !RESERVED_REFRESH_PARAMS.contains(&name) =>
        {
            Some(name.to_owned())
        }
        Some(name) => {
            return Err(invalid(
                key,
                "client_id_param",
                format!("`{name}` cannot name the client id"),
            ));
        }
    };

    let refresh_buffer = raw
        .refresh_buffer_secs
        .map_or(DEFAULT_REFRESH_BUFFER, Duration::from_secs);
    let default_expires_in = match raw.default_expires_in_secs {
        Some(0) => return Err(invalid(key, "default_expires_in_secs", "must be positive")),
        Some(secs) => Some(Duration::from_secs(secs)),
        None => None,
    };
    if let Some(lifetime) = default_expires_in
        && refresh_buffer >= lifetime
    {
        return Err(invalid(
            key,
            "refresh_buffer_secs",
            "must be shorter than default_expires_in_secs",
        ));
    }

    if let Some(path) = &raw.token_response_path {
        check_pointer(key, "token_response_path", path)?;
    }

    let profile = match &raw.profile {
        None => None,
        Some(p) => {
            let id = profile_pointers(key, "profile.id", p.id.as_ref())?;
            if id.is_empty() {
                return Err(invalid(key, "profile.id", "missing"));
            }
            Some(ProfileMapping {
                id,
                email: profile_pointers(key, "profile.email", p.email.as_ref())?,
                display_name: profile_pointers(
                    key,
                    "profile.display_name",
                    p.display_name.as_ref(),
                )?,
            })
        }
    };

    let refresh_tokens = raw.refresh_tokens.unwrap_or(true);
    let refresh_token_rotates = raw.refresh_token_rotates.unwrap_or(false);
    if refresh_token_rotates && !refresh_tokens {
        return Err(invalid(
            key,
            "refresh_token_rotates",
            "true but refresh_tokens is false",
        ));
    }

    let connection_params = resolve_params(
        key,
        raw.connection_params.as_ref(),
        policy,
        &[
            ("authorization_url", Some(&authorization_url)),
            ("token_url", Some(&token_url)),
            ("refresh_url", Some(&refresh_url)),
            ("revocation_url", revocation_url.as_ref()),
            (
                "device_authorization_url",
                device_authorization_url.as_ref(),
            ),
            ("userinfo_url", userinfo_url.as_ref()),
            ("api_base_url", api_base_url.as_ref()),
        ],
    )?;
    // `{name}` in an API header's value: the client id or a parameter
    // (Xero's `Xero-tenant-id: {tenant_id}`), filled per connection.
    for (header, value) in &api_headers {
        let mut rest = value.as_str();
        while let Some(start) = rest.find('{') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('}') else {
                return Err(invalid(
                    key,
                    "api_headers",
                    format!("`{header}`: unclosed placeholder"),
                ));
            };
            let name = &after[..end];
            if name != "client_id" && !connection_params.iter().any(|p| p.name == name) {
                return Err(invalid(
                    key,
                    "api_headers",
                    format!(
                        "`{header}`: placeholder `{{{name}}}` is not declared in connection_params"
                    ),
                ));
            }
            rest = &after[end + 1..];
        }
        let mut filled = value.replace("{client_id}", "client");
        for param in &connection_params {
            filled = filled.replace(&format!("{{{}}}", param.name), &param.example);
        }
        if reqwest::header::HeaderValue::from_str(&filled).is_err() {
            return Err(invalid(
                key,
                "api_headers",
                format!("`{header}` filled with the examples is not a header value"),
            ));
        }
    }
    let token_metadata = match &raw.token_metadata {
        None => None,
        Some(pointers) => {
            for pointer in pointers {
                check_pointer(key, "token_metadata", pointer)?;
                if pointer.split('/').any(crate::integrations::looks_secret) {
                    return Err(invalid(
                        key,
                        "token_metadata",
                        format!("`{pointer}` names a secret; only non-secret fields are kept"),
                    ));
                }
            }
            Some(pointers.clone())
        }
    };
    let id_token_claims = raw.id_token_claims.clone().unwrap_or_default();
    for claim in &id_token_claims {
        if claim.is_empty() || crate::integrations::looks_secret(claim) {
            return Err(invalid(
                key,
                "id_token_claims",
                format!("`{claim}` cannot be kept"),
            ));
        }
    }

    Ok(Resolved::Ready(Box::new(ProviderSpec {
        key: key.to_owned(),
        display_name,
        brand_color,
        alias_of,
        authorization_url,
        token_url,
        refresh_url,
        revocation_url,
        revocation_style,
        device_authorization_url,
        userinfo_url,
        issuer,
        iss_parameter_supported,
        openid_connect: raw.openid_connect.unwrap_or(false),
        scope_separator,
        default_scopes,
        scope_descriptions: raw.scope_descriptions.clone().unwrap_or_default(),
        authorize_params,
        authorize_style: raw.authorize_style.unwrap_or_default(),
        token_auth_method: raw.token_auth_method.unwrap_or_default(),
        public_client: raw
            .public_client
            .unwrap_or(raw.token_auth_method == Some(TokenAuthMethod::None)),
        token_request_format: raw.token_request_format.unwrap_or_default(),
        refresh_params,
        exchange_params,
        token_headers,
        api_headers,
        api_auth_header,
        client_id_param,
        refresh_sends_scope: raw.refresh_sends_scope.unwrap_or(false),
        pkce: raw.pkce.unwrap_or_default(),
        refresh_tokens,
        refresh_token_rotates,
        refresh_buffer,
        default_expires_in,
        api_base_url,
        api_auth_scheme: raw.api_auth_scheme.unwrap_or_default(),
        token_response_path: raw.token_response_path.clone(),
        profile,
        connection_params,
        token_metadata,
        id_token_claims,
    })))
}

/// The declared connection parameters, checked against every URL template:
/// each placeholder is declared, its source is known by the time the URL is
/// needed (the authorization request only has the session's values, the
/// code exchange the callback's too), and every template filled with the
/// examples is a valid URL.
fn resolve_params(
    key: &str,
    raw: Option<&BTreeMap<String, RawConnectionParam>>,
    policy: UrlPolicy,
    templates: &[(&str, Option<&Url>)],
) -> Result<Vec<ConnectionParamSpec>, CatalogError> {
    use params::{ParamPattern, ParamSource as Source, is_param_name};
    let mut specs: Vec<ConnectionParamSpec> = Vec::new();
    for (name, param) in raw.into_iter().flatten() {
        let field = |f: &str| format!("connection_params.{name}.{f}");
        if !is_param_name(name) || name == "client_id" {
            return Err(invalid(
                key,
                &format!("connection_params.{name}"),
                "a parameter name is a lowercase identifier (letters, digits, '_'), not client_id",
            ));
        }
        let pattern = param.pattern.as_deref().ok_or_else(|| {
            invalid(
                key,
                &field("pattern"),
                "missing: every parameter is validated",
            )
        })?;
        let pattern = ParamPattern::new(pattern).map_err(|m| invalid(key, &field("pattern"), m))?;
        let pointer = |what: &str| -> Result<String, CatalogError> {
            let pointer = param.pointer.clone().ok_or_else(|| {
                invalid(
                    key,
                    &field("pointer"),
                    format!("required for source {what}"),
                )
            })?;
            check_pointer(key, &field("pointer"), &pointer)?;
            Ok(pointer)
        };
        let source = match param.source {
            None => return Err(invalid(key, &field("source"), "missing")),
            Some(RawParamSource::Session) => Source::Session,
            Some(RawParamSource::Callback) => Source::Callback {
                query: param.query.clone().unwrap_or_else(|| name.clone()),
            },
            Some(RawParamSource::TokenResponse) => Source::TokenResponse {
                pointer: pointer("token_response")?,
            },
            Some(RawParamSource::PostConnect) => Source::PostConnect {
                request: required_url_field(
                    key,
                    &field("request"),
                    param.request.as_deref(),
                    policy,
                )?,
                pointer: pointer("post_connect")?,
            },
        };
        if param.query.is_some() && !matches!(source, Source::Callback { .. }) {
            return Err(invalid(key, &field("query"), "only for source callback"));
        }
        let example = param
            .example
            .clone()
            .ok_or_else(|| invalid(key, &field("example"), "missing"))?;
        specs.push(ConnectionParamSpec {
            name: name.clone(),
            description: param.description.clone().unwrap_or_default(),
            pattern,
            source,
            example,
            extract_host: param.extract.is_some(),
            positions: Vec::new(),
        });
    }

    let mut templated: Vec<(&str, &Url)> = Vec::new();
    let post_connect_requests: Vec<(String, Url)> = specs
        .iter()
        .filter_map(|s| match &s.source {
            Source::PostConnect { request, .. } => Some((
                format!("connection_params.{}.request", s.name),
                request.clone(),
            )),
            _ => None,
        })
        .collect();
    let all = templates
        .iter()
        .filter_map(|(field, url)| url.map(|u| (*field, u)))
        .chain(post_connect_requests.iter().map(|(f, u)| (f.as_str(), u)));
    for (field, url) in all {
        let found = params::placeholders(url).map_err(|m| invalid(key, field, m))?;
        if found.is_empty() {
            continue;
        }
        templated.push((field, url));
        for (name, position) in found {
            if name == "client_id" && field == "revocation_url" {
                continue; // github_grant's own placeholder
            }
            let Some(spec) = specs.iter_mut().find(|s| s.name == name) else {
                return Err(invalid(
                    key,
                    field,
                    format!("placeholder `{{{name}}}` is not declared in connection_params"),
                ));
            };
            let known_in_time = match field {
                "authorization_url" | "device_authorization_url" => {
                    matches!(spec.source, Source::Session)
                }
                "token_url" => matches!(spec.source, Source::Session | Source::Callback { .. }),
                _ if field.ends_with(".request") => {
                    !matches!(spec.source, Source::PostConnect { .. })
                }
                _ => true,
            };
            if !known_in_time {
                return Err(invalid(
                    key,
                    field,
                    format!(
                        "`{{{name}}}` comes from the {} and is not known yet when this URL is used",
                        spec.source.as_str()
                    ),
                ));
            }
            if !spec.positions.contains(&position) {
                spec.positions.push(position);
            }
        }
    }

    let mut examples = ConnectionParams::new();
    for spec in &specs {
        // An `extract = "host"` example may be the URL or the host itself.
        let value = spec
            .check(&spec.example)
            .or_else(|e| {
                if spec.extract_host {
                    spec.check_value(&spec.example)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| {
                invalid(
                    key,
                    &format!("connection_params.{}.example", spec.name),
                    e.to_string(),
                )
            })?;
        examples.insert(spec.name.clone(), value);
    }
    examples.insert("client_id", "example-client");
    for (field, url) in templated {
        params::fill(url, &examples)
            .map_err(|m| invalid(key, field, format!("filled with the examples: {m}")))?;
    }
    Ok(specs)
}

// ---------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------
