//! Connection parameters: the parts of a provider's URLs that depend on the
//! connection (Shopify's shop, Salesforce's instance, QuickBooks' realm,
//! Atlassian's cloud id, an Entra tenant).
//!
//! A catalog entry declares each parameter — a validation pattern and where
//! its value comes from — and uses it as a `{name}` placeholder in its URL
//! fields: in the host (`https://{shop}.myshopify.com/...`), in a path
//! segment or in a query value. A value reaches a URL only through
//! [`fill`], and only after [`ConnectionParamSpec::check`]: it matches the
//! entry's pattern *and* the rules of every position it fills (a host
//! label set, a single path segment), so a value can never change a URL's
//! scheme, port, host suffix or path prefix — no SSRF through a parameter.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use url::{Host, Url};

/// The longest value a parameter may have (a DNS name's limit).
pub const MAX_PARAM_LEN: usize = 253;

/// Where a connection parameter's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamSource {
    /// The application passes it when it creates the connect session
    /// (`connection_params: {"shop": "acme"}`).
    Session,
    /// A query parameter of the OAuth callback (QuickBooks' `realmId`).
    Callback { query: String },
    /// A JSON pointer into the token response (Salesforce's `/instance_url`).
    TokenResponse { pointer: String },
    /// One GET with the new access token after the code exchange
    /// (Atlassian's accessible resources), read through a JSON pointer.
    PostConnect { request: Url, pointer: String },
}

impl ParamSource {
    /// The catalog's name for the source.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Callback { .. } => "callback",
            Self::TokenResponse { .. } => "token_response",
            Self::PostConnect { .. } => "post_connect",
        }
    }
}

/// Where in a URL a placeholder sits; each position has its own rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Position {
    /// Part of (or the whole) host: the value must be DNS labels.
    Host,
    /// A path segment: percent-encoded, never `.` or `..`.
    Path,
    /// A query value: percent-encoded.
    Query,
}

/// A compiled, anchored validation pattern (compared by its source text).
#[derive(Debug, Clone)]
pub struct ParamPattern {
    source: String,
    regex: regex::Regex,
}

impl ParamPattern {
    /// Compiles `pattern`; it must match the *whole* value, whatever anchors
    /// it has itself.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let regex = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("`{pattern}` is not a valid pattern: {e}"))?;
        Ok(Self {
            source: pattern.to_owned(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl PartialEq for ParamPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// One declared connection parameter of a catalog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionParamSpec {
    pub name: String,
    /// What the value is, in plain words.
    pub description: String,
    pub pattern: ParamPattern,
    pub source: ParamSource,
    /// A realistic value (matches the pattern); the catalog's checks fill
    /// every template with it.
    pub example: String,
    /// The value arrives as an https URL (Salesforce's `instance_url`);
    /// only its host is kept, and the pattern applies to that host.
    pub extract_host: bool,
    /// The positions the entry's URL templates use it in.
    pub positions: Vec<Position>,
}

/// Why a connection parameter was refused. Messages name the parameter and
/// never echo a refused value back beyond a short excerpt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown connection parameter `{name}` (this provider takes: {known})")]
    Unknown { name: String, known: String },
    #[error(
        "connection parameter `{name}` comes from the {source_name}; the application cannot set it"
    )]
    NotSettable {
        name: String,
        source_name: &'static str,
    },
    #[error("missing connection parameter `{name}`: {description}")]
    Missing { name: String, description: String },
    #[error("connection parameter `{name}` is invalid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("reading connection parameter `{name}` failed: {reason}")]
    Unavailable { name: String, reason: String },
}

impl ParamError {
    /// The parameter concerned.
    pub fn name(&self) -> &str {
        match self {
            Self::Unknown { name, .. }
            | Self::NotSettable { name, .. }
            | Self::Missing { name, .. }
            | Self::Invalid { name, .. }
            | Self::Unavailable { name, .. } => name,
        }
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> ParamError {
    ParamError::Invalid {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// A host label set: lowercase letters, digits, `-` inside labels, labels
/// joined by single dots, no trailing dot.
fn is_dns_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_PARAM_LEN
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl ConnectionParamSpec {
    /// Validates `raw` (as given or as read from the provider) and returns
    /// the value to store: the host for an `extract_host` parameter, else
    /// `raw` itself.
    pub fn check(&self, raw: &str) -> Result<String, ParamError> {
        let name = self.name.as_str();
        if raw.is_empty() {
            return Err(invalid(name, "empty"));
        }
        if raw.len() > 2048 || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(
                name,
                "too long, or has whitespace or control characters",
            ));
        }
        let value: Cow<'_, str> = if self.extract_host {
            Cow::Owned(https_origin_host(name, raw)?)
        } else {
            Cow::Borrowed(raw)
        };
        self.check_value(&value)
    }

    /// Validates a value as stored (after [`ConnectionParamSpec::check`]'s
    /// extraction): the pattern and the rules of every position it fills.
    pub fn check_value(&self, value: &str) -> Result<String, ParamError> {
        let name = self.name.as_str();
        if value.is_empty() || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid(
                name,
                "empty, or has whitespace or control characters",
            ));
        }
        if value.len() > MAX_PARAM_LEN {
            return Err(invalid(
                name,
                format!("longer than {MAX_PARAM_LEN} characters"),
            ));
        }
        if !self.pattern.is_match(value) {
            return Err(invalid(
                name,
                format!("does not match the pattern {}", self.pattern.as_str()),
            ));
        }
        for position in &self.positions {
            match position {
                Position::Host => {
                    if !is_dns_name(value) {
                        return Err(invalid(
                            name,
                            "is used in a host name: only lowercase letters, digits, '-' and '.' between labels",
                        ));
                    }
                    if value.parse::<std::net::Ipv4Addr>().is_ok()
                        || value.rsplit('.').next().is_some_and(|tld| {
                            tld.bytes().all(|b| b.is_ascii_digit()) || tld == "localhost"
                        })
                        || value == "localhost"
                    {
                        return Err(invalid(name, "must name a public host"));
                    }
                }
                Position::Path => {
                    if value == "." || value == ".." {
                        return Err(invalid(name, "is used as a path segment: not `.` or `..`"));
                    }
                }
                Position::Query => {}
            }
        }
        Ok(value.to_owned())
    }
}

/// The host of `raw`, which must be a bare https origin (no credentials,
/// port, path, query or fragment) naming a domain, not an IP address.
fn https_origin_host(name: &str, raw: &str) -> Result<String, ParamError> {
    let url = Url::parse(raw).map_err(|e| invalid(name, format!("not a URL ({e})")))?;
    if url.scheme() != "https" {
        return Err(invalid(name, "must be an https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(name, "must not carry credentials"));
    }
    if url.port().is_some() {
        return Err(invalid(name, "must not name a port"));
    }
    if !(url.path() == "/" || url.path().is_empty())
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(invalid(
            name,
            "must be an origin (no path, query or fragment)",
        ));
    }
    match url.host() {
        Some(Host::Domain(domain)) => Ok(domain.to_ascii_lowercase()),
        _ => Err(invalid(name, "must name a host, not an IP address")),
    }
}

/// A connection's parameter values, by name (stored in the connection's
/// metadata under [`ConnectionParams::METADATA_KEY`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionParams(BTreeMap<String, String>);

impl ConnectionParams {
    /// Where a connection's metadata keeps its parameters.
    pub const METADATA_KEY: &'static str = "connection_params";

    pub fn new() -> Self {
        Self::default()
    }

    /// The parameters stored in a connection's metadata (none when absent
    /// or not an object of strings).
    pub fn from_metadata(metadata: &serde_json::Value) -> Self {
        let Some(object) = metadata
            .get(Self::METADATA_KEY)
            .and_then(serde_json::Value::as_object)
        else {
            return Self::default();
        };
        Self(
            object
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Values set in `other` replace ours.
    pub fn extend(&mut self, other: &ConnectionParams) {
        self.0
            .extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}

impl From<BTreeMap<String, String>> for ConnectionParams {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

impl FromIterator<(String, String)> for ConnectionParams {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

// ---------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------

/// A placeholder name: a lowercase identifier.
pub(crate) fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The placeholders of `text` in the form `open name close` (`{name}` or
/// `%7Bname%7D`), in order; a malformed one is an error.
fn scan<'a>(text: &'a str, open: &str, close: &str) -> Result<Vec<&'a str>, String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = find_ci(rest, open) {
        let after = &rest[start + open.len()..];
        let end =
            find_ci(after, close).ok_or_else(|| format!("unclosed placeholder in `{text}`"))?;
        let name = &after[..end];
        if !is_param_name(name) {
            return Err(format!(
                "`{name}` is not a placeholder name (lowercase letters, digits, '_')"
            ));
        }
        found.push(name);
        rest = &after[end + close.len()..];
    }
    Ok(found)
}

/// Case-insensitive find (percent-encodings may be `%7b`).
fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

const OPEN: &str = "{";
const CLOSE: &str = "}";
const OPEN_ENCODED: &str = "%7B";
const CLOSE_ENCODED: &str = "%7D";

/// Every placeholder of a URL template with its position. Placeholders in
/// the credentials, the port or the fragment are errors.
pub fn placeholders(url: &Url) -> Result<Vec<(String, Position)>, String> {
    let mut found = Vec::new();
    if url.username().contains(OPEN_ENCODED)
        || url.username().contains('{')
        || url.password().is_some()
    {
        return Err("URL templates cannot carry credentials".into());
    }
    if let Some(host) = url.host_str() {
        for name in scan(host, OPEN, CLOSE)? {
            found.push((name.to_owned(), Position::Host));
        }
    }
    for name in scan(url.path(), OPEN_ENCODED, CLOSE_ENCODED)? {
        found.push((name.to_owned(), Position::Path));
    }
    if let Some(query) = url.query() {
        for name in
            scan(query, OPEN, CLOSE)?
                .into_iter()
                .chain(scan(query, OPEN_ENCODED, CLOSE_ENCODED)?)
        {
            found.push((name.to_owned(), Position::Query));
        }
    }
    Ok(found)
}

/// Whether `url` still holds a placeholder (a template not filled).
pub fn is_template(url: &Url) -> bool {
    url.host_str().is_some_and(|h| h.contains('{'))
        || find_ci(url.path(), OPEN_ENCODED).is_some()
        || url
            .query()
            .is_some_and(|q| q.contains('{') || find_ci(q, OPEN_ENCODED).is_some())
}

/// The first placeholder of `url` with no value in `values`.
pub fn first_missing(url: &Url, values: &ConnectionParams) -> Option<String> {
    placeholders(url)
        .ok()?
        .into_iter()
        .map(|(name, _)| name)
        .find(|name| values.get(name).is_none())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn replace_all_ci(
    text: &str,
    open: &str,
    close: &str,
    values: &ConnectionParams,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_ci(rest, open) {
        out.push_str(&rest[..start]);
        let after = &rest[start + open.len()..];
        let end = find_ci(after, close).ok_or("unclosed placeholder")?;
        let name = &after[..end];
        let value = values
            .get(name)
            .ok_or_else(|| format!("no value for `{name}`"))?;
        out.push_str(&encode_component(value));
        rest = &after[end + close.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Fills every placeholder of `template` with `values`, which the caller
/// has checked ([`ConnectionParamSpec::check`]). The result is verified
/// against the template: same scheme and port, no credentials, a host that
/// ends with the template's literal host suffix and is a domain (never an
/// IP address), a path with the template's literal prefix. A template
/// without placeholders is returned as is.
pub fn fill(template: &Url, values: &ConnectionParams) -> Result<Url, String> {
    if !is_template(template) {
        return Ok(template.clone());
    }
    let mut url = template.clone();
    let host_template = template.host_str().unwrap_or_default();
    if host_template.contains('{') {
        let mut host = String::with_capacity(host_template.len());
        let mut rest = host_template;
        while let Some(start) = rest.find('{') {
            host.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let end = after.find('}').ok_or("unclosed placeholder")?;
            let name = &after[..end];
            let value = values
                .get(name)
                .ok_or_else(|| format!("no value for `{name}`"))?;
            if !is_dns_name(value) {
                return Err(format!("`{name}` cannot be used in a host name"));
            }
            host.push_str(value);
            rest = &after[end + 1..];
        }
        host.push_str(rest);
        url.set_host(Some(&host))
            .map_err(|e| format!("the host `{host}` is not valid: {e}"))?;
        match url.host() {
            Some(Host::Domain(domain)) if domain == host => {}
            _ => return Err(format!("the host `{host}` is not a plain domain name")),
        }
        // Whatever the value, the template's literal suffix stays the end of
        // the host (`.myshopify.com`).
        let suffix = host_template.rsplit('}').next().unwrap_or_default();
        if !host.ends_with(suffix) {
            return Err("the host lost the template's suffix".into());
        }
    }
    let path_template = template.path();
    if find_ci(path_template, OPEN_ENCODED).is_some() {
        let path = replace_all_ci(path_template, OPEN_ENCODED, CLOSE_ENCODED, values)?;
        url.set_path(&path);
        let prefix_end = find_ci(path_template, OPEN_ENCODED).unwrap_or(0);
        if !url.path().starts_with(&path_template[..prefix_end]) {
            return Err("the path lost the template's prefix".into());
        }
    }
    if let Some(query) = template.query()
        && (query.contains('{') || find_ci(query, OPEN_ENCODED).is_some())
    {
        let filled = replace_all_ci(query, OPEN, CLOSE, values)?;
        let filled = replace_all_ci(&filled, OPEN_ENCODED, CLOSE_ENCODED, values)?;
        url.set_query(Some(&filled));
    }
    if url.scheme() != template.scheme()
        || url.port() != template.port()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.fragment().is_some()
        || is_template(&url)
    {
        return Err("the filled URL does not keep the template's shape".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        name: &str,
        pattern: &str,
        positions: &[Position],
        extract_host: bool,
    ) -> ConnectionParamSpec {
        ConnectionParamSpec {
            name: name.into(),
            description: "test".into(),
            pattern: ParamPattern::new(pattern).unwrap(),
            source: ParamSource::Session,
            example: "acme".into(),
            extract_host,
            positions: positions.to_vec(),
        }
    }

    fn values(pairs: &[(&str, &str)]) -> ConnectionParams {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn placeholders_are_found_in_host_path_and_query() {
        let url =
            Url::parse("https://{shop}.myshopify.com/admin/{version}/x?realm={realm}").unwrap();
        assert_eq!(
            placeholders(&url).unwrap(),
            vec![
                ("shop".to_owned(), Position::Host),
                ("version".to_owned(), Position::Path),
                ("realm".to_owned(), Position::Query),
            ]
        );
        assert!(is_template(&url));
        assert!(!is_template(
            &Url::parse("https://example.com/a?b=c").unwrap()
        ));
        assert!(placeholders(&Url::parse("https://{Bad-Name}.example.com/").unwrap()).is_err());
    }

    #[test]
    fn filling_keeps_the_templates_shape() {
        let url = Url::parse("https://{shop}.myshopify.com/admin/oauth/access_token").unwrap();
        let filled = fill(&url, &values(&[("shop", "acme")])).unwrap();
        assert_eq!(
            filled.as_str(),
            "https://acme.myshopify.com/admin/oauth/access_token"
        );

        let url = Url::parse("https://quickbooks.api.intuit.com/v3/company/{realm_id}").unwrap();
        let filled = fill(&url, &values(&[("realm_id", "a/../../b?c#d")])).unwrap();
        assert_eq!(
            filled.as_str(),
            "https://quickbooks.api.intuit.com/v3/company/a%2F..%2F..%2Fb%3Fc%23d"
        );

        let url = Url::parse("https://{instance}/services/data/v62.0").unwrap();
        let filled = fill(&url, &values(&[("instance", "acme.my.salesforce.com")])).unwrap();
        assert_eq!(
            filled.as_str(),
            "https://acme.my.salesforce.com/services/data/v62.0"
        );
        // A value that is not a plain DNS name never becomes a host.
        for bad in [
            "evil.com:444",
            "evil.com/x",
            "user@evil.com",
            "127.0.0.1%2f",
            "a..b",
            "EVIL.com",
            "[::1]",
        ] {
            assert!(fill(&url, &values(&[("instance", bad)])).is_err(), "{bad}");
        }
        assert!(fill(&url, &values(&[])).is_err());
    }

    #[test]
    fn checks_apply_the_pattern_and_every_position() {
        let shop = spec("shop", "[a-z0-9][a-z0-9-]{0,62}", &[Position::Host], false);
        assert_eq!(shop.check("acme-1").unwrap(), "acme-1");
        for bad in [
            "",
            "acme.evil.com",
            "acme/..",
            "Acme",
            "acme ",
            "-acme",
            "acme#",
            "acme%2e",
            "a\u{0}b",
            &"a".repeat(64),
        ] {
            assert!(shop.check(bad).is_err(), "{bad:?}");
        }
        // The pattern is anchored even when the entry forgot to.
        let loose = spec("shop", "[a-z]+", &[Position::Host], false);
        assert!(loose.check("acme.evil").is_err());

        let instance = spec(
            "instance",
            r"[a-z0-9-]+(\.[a-z0-9-]+)*\.(my\.)?salesforce\.com",
            &[Position::Host],
            true,
        );
        assert_eq!(
            instance.check("https://acme.my.salesforce.com").unwrap(),
            "acme.my.salesforce.com"
        );
        for bad in [
            "http://acme.my.salesforce.com",
            "https://acme.my.salesforce.com.evil.com",
            "https://evil.com/acme.my.salesforce.com",
            "https://user:pw@acme.my.salesforce.com",
            "https://acme.my.salesforce.com:8443",
            "https://acme.my.salesforce.com/path",
            "https://127.0.0.1",
            "acme.my.salesforce.com",
        ] {
            assert!(instance.check(bad).is_err(), "{bad}");
        }

        let segment = spec("realm_id", "[^/]+", &[Position::Path], false);
        assert!(segment.check("..").is_err());
        assert!(segment.check(".").is_err());
        assert_eq!(segment.check("9130").unwrap(), "9130");
    }
}
