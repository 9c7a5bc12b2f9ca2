//! [`ApiPath`]: a path relative to an integration's API base that can never
//! leave it, and the query-string check.

use std::fmt;

use url::Url;

/// Longest accepted path, in bytes (percent-encoded).
pub const MAX_PATH_BYTES: usize = 2048;
/// Longest accepted query string, in bytes.
pub const MAX_QUERY_BYTES: usize = 8192;

/// Why a path or query was refused. No request is sent for any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiPathError {
    #[error("the path is an absolute URL; give a path relative to the integration's API base URL")]
    AbsoluteUrl,
    #[error("the path starts with `//` or has an empty segment, which could name another host")]
    EmptySegment,
    #[error(
        "the path has a segment that reads as `.` or `..` (plain, percent-encoded at any depth, with `;` parameters or in Unicode look-alikes)"
    )]
    DotSegment,
    #[error(
        "the path has a percent-encoded `/`, `\\` or control character (at any depth of encoding)"
    )]
    EncodedSeparator,
    #[error("the path has a character that is not allowed in a URL path: {0:?}")]
    InvalidCharacter(char),
    #[error("the path has a malformed percent-escape or escapes bytes that are not UTF-8")]
    BadEscape,
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("the query string has a character that is not allowed: {0:?}")]
    InvalidQuery(char),
    #[error("the query string is longer than {MAX_QUERY_BYTES} bytes")]
    QueryTooLong,
    #[error("the resulting URL leaves the integration's API base URL")]
    OutsideBase,
}

/// A path below an integration's API base URL, as percent-encoded text
/// without a leading `/` (`me/tracks`, `users/%40me`). A trailing `/` is
/// kept: some APIs tell `x` and `x/` apart.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiPath(String);

impl ApiPath {
    /// Validates a caller-supplied path; one leading `/` is accepted and
    /// dropped.
    pub fn parse(raw: &str) -> Result<Self, ApiPathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(ApiPathError::TooLong);
        }
        let path = raw.strip_prefix('/').unwrap_or(raw);
        if path.starts_with('/') {
            return Err(ApiPathError::EmptySegment);
        }
        let mut segments = path.split('/').peekable();
        let mut first = true;
        while let Some(segment) = segments.next() {
            let last = segments.peek().is_none();
            // Only a trailing `/` may leave an empty segment.
            if segment.is_empty() && (!last || first) && !path.is_empty() {
                return Err(ApiPathError::EmptySegment);
            }
            // RFC 3986 §4.2: a relative reference whose first segment has a
            // colon reads as a scheme (`https:`, `javascript:`).
            if first && segment.contains(':') {
                return Err(ApiPathError::AbsoluteUrl);
            }
            check_segment(segment)?;
            first = false;
        }
        Ok(Self(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `base` + `/` + this path (+ `?query`), checked to stay under `base`:
    /// same scheme, host and port, and a path that starts with the base's.
    pub fn url_under(&self, base: &Url, query: Option<&str>) -> Result<Url, ApiPathError> {
        let mut text = base.as_str().trim_end_matches('/').to_owned();
        // The base may carry a query of its own (rare); we never append to one.
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ApiPathError::OutsideBase);
        }
        if !self.0.is_empty() {
            text.push('/');
            text.push_str(&self.0);
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            check_query(query)?;
            text.push('?');
            text.push_str(query);
        }
        let url = Url::parse(&text).map_err(|_| ApiPathError::OutsideBase)?;
        let base_path = base.path().trim_end_matches('/');
        let stays = url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
            && url.username() == base.username()
            && url.password() == base.password()
            && url.fragment().is_none()
            && (url.path() == base_path
                || url.path().starts_with(&format!("{base_path}/"))
                || (base_path.is_empty() && url.path().starts_with('/')));
        if stays {
            Ok(url)
        } else {
            Err(ApiPathError::OutsideBase)
        }
    }
}

impl fmt::Debug for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiPath({:?})", self.0)
    }
}

impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// RFC 3986 `pchar` minus `%`, which is checked as an escape.
fn is_path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&c)
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// How many rounds of percent-decoding a segment is checked through: a
/// chain of proxies and frameworks each decoding once is how `%252e%252e`
/// becomes `..` at the far end.
const DECODE_ROUNDS: usize = 4;

/// Refuses a segment that some server on the way could read as `.` or `..`
/// or as a separator: as sent, after each of up to [`DECODE_ROUNDS`]
/// percent-decodings, with any `;params` dropped (Tomcat and Jetty read
/// `..;x` as `..`), trimmed, and in Unicode NFKC form (`．．` and `‥` are
/// `..` there). Invalid UTF-8 after decoding is refused too: overlong forms
/// such as `%c0%ae` are dots to some decoders.
fn check_segment(segment: &str) -> Result<(), ApiPathError> {
    let mut text = decode_segment(segment)?;
    for round in 0..DECODE_ROUNDS {
        if reads_as_dots(&text) {
            return Err(ApiPathError::DotSegment);
        }
        use unicode_normalization::UnicodeNormalization as _;
        let separator = |c: char| c == '/' || c == '\\' || c.is_control();
        if (round > 0 && text.chars().any(separator)) || text.nfkc().any(separator) {
            return Err(ApiPathError::EncodedSeparator);
        }
        if !text.contains('%') {
            return Ok(());
        }
        text = match lenient_decode(&text) {
            Some(next) if next != text => next,
            _ => return Ok(()),
        };
    }
    if reads_as_dots(&text) {
        return Err(ApiPathError::DotSegment);
    }
    Ok(())
}

/// Whether a decoded segment is `.` or `..` to a lenient server.
fn reads_as_dots(decoded: &str) -> bool {
    use unicode_normalization::UnicodeNormalization as _;
    let is_dots = |s: &str| {
        let s = s.trim_matches(|c: char| c.is_whitespace() || c.is_control());
        s == "." || s == ".."
    };
    let without_params = decoded.split(';').next().unwrap_or_default();
    if is_dots(without_params) || is_dots(decoded) {
        return true;
    }
    let normalized: String = decoded.nfkc().collect();
    is_dots(&normalized) || is_dots(normalized.split(';').next().unwrap_or_default())
}

/// One more round of percent-decoding for [`check_segment`]; `None` when
/// the text is not valid UTF-8 afterwards. Malformed escapes stay as they
/// are, as most servers leave them.
fn lenient_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-decodes one segment, refusing escapes that would change the
/// path's structure or smuggle control characters, and bytes that are not
/// UTF-8.
fn decode_segment(segment: &str) -> Result<String, ApiPathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(ApiPathError::BadEscape);
            };
            let byte = hi << 4 | lo;
            if byte == b'/' || byte == b'\\' || byte < 0x20 || byte == 0x7f {
                return Err(ApiPathError::EncodedSeparator);
            }
            out.push(byte);
            i += 3;
        } else if is_path_char(c) {
            out.push(c);
            i += 1;
        } else {
            let shown = segment[i..].chars().next().unwrap_or('?');
            return Err(ApiPathError::InvalidCharacter(shown));
        }
    }
    String::from_utf8(out).map_err(|_| ApiPathError::BadEscape)
}

pub(crate) fn check_query(query: &str) -> Result<(), ApiPathError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiPathError::QueryTooLong);
    }
    if let Some(bad) = query
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '#' | '\\'))
    {
        return Err(ApiPathError::InvalidQuery(bad));
    }
    // A control character may also arrive percent-encoded; CR/LF there
    // would split a header if a provider echoed the query into one.
    let lower = query.to_ascii_lowercase();
    if lower.contains("%0d") || lower.contains("%0a") || lower.contains("%00") {
        return Err(ApiPathError::InvalidQuery('%'));
    }
    Ok(())
}
