//! Which headers pass through the proxy in each direction.

use reqwest::header::{self, HeaderMap, HeaderName};

/// Headers that describe one hop, never the end-to-end message (RFC 9110
/// §7.6.1), plus those tokenvault sets itself or must not pass on.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

/// Whether a request header from the caller may go on to the provider.
pub fn forwards_request_header(name: &HeaderName) -> bool {
    !NOT_FORWARDED.contains(&name.as_str()) && !name.as_str().starts_with("x-tokenvault-")
}

/// Whether a provider response header may go back to the caller: hop-by-hop
/// headers and cookies for the provider's domain stay behind, and so do
/// headers in tokenvault's own namespace (`tokenvault-*`, `x-tokenvault-*`),
/// so a client can trust that `Tokenvault-Error` marks tokenvault's refusal
/// and never the provider's answer.
pub fn forwards_response_header(name: &HeaderName) -> bool {
    let ours =
        name.as_str().starts_with("tokenvault-") || name.as_str().starts_with("x-tokenvault-");
    !ours
        && !matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-authenticate"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "set-cookie"
                | "content-length"
        )
}

/// Removes the headers [`forwards_request_header`] refuses, and any header a
/// `Connection` header names.
pub fn strip_request_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let refused: Vec<HeaderName> = headers
        .keys()
        .filter(|name| !forwards_request_header(name))
        .cloned()
        .collect();
    for name in refused {
        headers.remove(name);
    }
}
