//! Path, query and header checks of the provider proxy.

use super::*;
use reqwest::header::HeaderName;

fn base() -> Url {
    Url::parse("https://api.example.com/v1").unwrap()
}

#[test]
fn ordinary_paths_stay_under_the_base() {
    for (path, expected) in [
        ("me", "https://api.example.com/v1/me"),
        ("/me/tracks", "https://api.example.com/v1/me/tracks"),
        ("users/%40me/x", "https://api.example.com/v1/users/%40me/x"),
        ("a.b/c..d/...", "https://api.example.com/v1/a.b/c..d/..."),
        ("trailing/", "https://api.example.com/v1/trailing/"),
        ("", "https://api.example.com/v1"),
    ] {
        let url = ApiPath::parse(path).unwrap().url_under(&base(), None);
        assert_eq!(url.unwrap().as_str(), expected, "{path}");
    }
    let url = ApiPath::parse("me/tracks")
        .unwrap()
        .url_under(&base(), Some("ids=1,2&market=DE"))
        .unwrap();
    assert_eq!(
        url.as_str(),
        "https://api.example.com/v1/me/tracks?ids=1,2&market=DE"
    );
}

#[test]
fn escapes_are_refused() {
    let cases: &[(&str, ApiPathError)] = &[
        ("https://evil.example/x", ApiPathError::AbsoluteUrl),
        ("http:evil", ApiPathError::AbsoluteUrl),
        ("javascript:alert(1)", ApiPathError::AbsoluteUrl),
        ("//evil.example/x", ApiPathError::EmptySegment),
        ("///evil", ApiPathError::EmptySegment),
        ("a//b", ApiPathError::EmptySegment),
        ("..", ApiPathError::DotSegment),
        ("../x", ApiPathError::DotSegment),
        ("a/../../x", ApiPathError::DotSegment),
        ("%2e%2e/x", ApiPathError::DotSegment),
        ("%2E%2e/x", ApiPathError::DotSegment),
        (".%2e/admin", ApiPathError::DotSegment),
        ("a/./b", ApiPathError::DotSegment),
        ("a%2f..%2fb", ApiPathError::EncodedSeparator),
        ("a%5c..", ApiPathError::EncodedSeparator),
        ("a/b%0d%0aX-Injected:1", ApiPathError::EncodedSeparator),
        ("a%00", ApiPathError::EncodedSeparator),
        ("a\r\nb", ApiPathError::InvalidCharacter('\r')),
        ("a b", ApiPathError::InvalidCharacter(' ')),
        ("a\\b", ApiPathError::InvalidCharacter('\\')),
        ("a?b=1", ApiPathError::InvalidCharacter('?')),
        ("a#frag", ApiPathError::InvalidCharacter('#')),
        ("%zz", ApiPathError::BadEscape),
        ("%4", ApiPathError::BadEscape),
        ("..;/admin", ApiPathError::DotSegment),
        ("x/.;jsessionid=1/admin", ApiPathError::DotSegment),
        ("%252e%252e/admin", ApiPathError::DotSegment),
        ("%252fadmin", ApiPathError::EncodedSeparator),
        ("%ef%bc%8e%ef%bc%8e/admin", ApiPathError::DotSegment),
        ("%e2%80%a5/admin", ApiPathError::DotSegment),
        ("a%ef%bc%8fb", ApiPathError::EncodedSeparator),
        ("%c0%ae%c0%ae/admin", ApiPathError::BadEscape),
        ("..%20/admin", ApiPathError::DotSegment),
    ];
    for (path, expected) in cases {
        assert_eq!(ApiPath::parse(path).as_ref(), Err(expected), "{path:?}");
    }
    assert_eq!(
        ApiPath::parse(&"a".repeat(MAX_PATH_BYTES + 1)),
        Err(ApiPathError::TooLong)
    );
}

#[test]
fn queries_cannot_smuggle_fragments_or_line_breaks() {
    let path = ApiPath::parse("me").unwrap();
    for query in ["a=1#x", "a=1\r\nb", "a=%0d%0aHost:evil", "a=%00", "a b"] {
        assert!(path.url_under(&base(), Some(query)).is_err(), "{query:?}");
    }
}

#[test]
fn a_base_at_the_root_accepts_any_relative_path() {
    let root = Url::parse("https://api.github.com").unwrap();
    let url = ApiPath::parse("user/repos")
        .unwrap()
        .url_under(&root, None)
        .unwrap();
    assert_eq!(url.as_str(), "https://api.github.com/user/repos");
}

proptest::proptest! {
    /// Whatever the caller sends, a path that parses yields a URL on the
    /// base's host under the base's path.
    #[test]
    fn parsed_paths_never_leave_the_base(raw in "[a-zA-Z0-9%./:@?#\\\\-]{0,40}") {
        if let Ok(path) = ApiPath::parse(&raw) {
            let url = path.url_under(&base(), None).unwrap();
            proptest::prop_assert_eq!(url.host_str(), Some("api.example.com"));
            proptest::prop_assert!(url.path() == "/v1" || url.path().starts_with("/v1/"), "{}", url);
        }
    }
}

#[test]
fn hop_by_hop_and_our_own_headers_are_not_forwarded() {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("authorization", "Bearer tvk_ours"),
        ("connection", "keep-alive, x-secret-hop"),
        ("x-secret-hop", "1"),
        ("transfer-encoding", "chunked"),
        ("host", "tokenvault.internal"),
        ("cookie", "session=abc"),
        ("x-tokenvault-min-ttl", "60"),
        ("accept", "application/json"),
        ("if-none-match", "\"abc\""),
        ("content-type", "application/json"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    strip_request_headers(&mut headers);
    let mut kept: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
    kept.sort();
    assert_eq!(kept, ["accept", "content-type", "if-none-match"]);
}
