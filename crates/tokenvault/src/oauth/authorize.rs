//! Authorization request URL building and callback checks (RFC 6749 §4.1.1,
//! RFC 7636, RFC 9207).

use url::Url;

use super::pkce::PKCE_METHOD_S256;

/// Parameters of an authorization-code request.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeRequest<'a> {
    /// The provider's authorization endpoint. Query parameters it already
    /// carries are kept (unless overridden by a parameter set here).
    pub authorization_url: &'a Url,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    /// Omitted from the URL when empty.
    pub scopes: &'a [String],
    /// `" "` per RFC 6749; some providers want `","` or `"+"`.
    pub scope_separator: &'a str,
    pub state: &'a str,
    /// S256 challenge from [`Pkce::challenge`](super::Pkce::challenge);
    /// `code_challenge_method=S256` is added alongside.
    pub code_challenge: Option<&'a str>,
    /// Provider-specific parameters (`access_type=offline`, `prompt=consent`,
    /// `duration=permanent`, ...). Entries whose name collides with a core
    /// parameter set by this builder (`response_type`, `client_id`,
    /// `redirect_uri`, `scope`, `state`, `code_challenge`,
    /// `code_challenge_method`) are ignored: the core value wins.
    pub extra_params: &'a [(String, String)],
}

/// Builds the URL to send the user agent to.
///
/// Parameter precedence: core parameters > `extra_params` > parameters already
/// present in `authorization_url` (each name appears at most once, as RFC 6749
/// §3.1 requires).
pub fn build_authorize_url(req: &AuthorizeRequest<'_>) -> Url {
    let mut core: Vec<(&str, String)> = vec![
        ("response_type", "code".to_string()),
        ("client_id", req.client_id.to_string()),
        ("redirect_uri", req.redirect_uri.to_string()),
    ];
    if !req.scopes.is_empty() {
        core.push(("scope", req.scopes.join(req.scope_separator)));
    }
    core.push(("state", req.state.to_string()));
    if let Some(challenge) = req.code_challenge {
        core.push(("code_challenge", challenge.to_string()));
        core.push(("code_challenge_method", PKCE_METHOD_S256.to_string()));
    }
    const RESERVED: [&str; 7] = [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    ];
    let extras: Vec<(&str, &str)> = req
        .extra_params
        .iter()
        .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let overridden = |k: &str| RESERVED.contains(&k) || extras.iter().any(|(ek, _)| *ek == k);
    let existing: Vec<(String, String)> = req
        .authorization_url
        .query_pairs()
        .filter(|(k, _)| !overridden(k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();

    let mut url = req.authorization_url.clone();
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in &existing {
            q.append_pair(k, v);
        }
        for (k, v) in &core {
            q.append_pair(k, v);
        }
        for (k, v) in &extras {
            q.append_pair(k, v);
        }
    }
    url
}

/// Why a callback's `iss` parameter was rejected (RFC 9207).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerMismatch {
    /// The provider advertises `authorization_response_iss_parameter_supported`
    /// but the callback carries no `iss`.
    #[error("authorization response is missing the `iss` parameter")]
    Missing,
    /// The provider advertises `iss` support but no expected issuer is configured,
    /// so the response cannot be verified.
    #[error("provider sends `iss` but no expected issuer is configured")]
    NoExpectedIssuer,
    /// `iss` does not equal the expected issuer (simple string comparison).
    #[error("authorization response issuer `{actual}` does not match expected `{expected}`")]
    Mismatch { expected: String, actual: String },
}

/// RFC 9207 mix-up defence for the authorization callback.
///
/// * `advertised` (`authorization_response_iss_parameter_supported` in the
///   provider metadata): `iss` must be present and equal to `expected_issuer`,
///   which must be known.
/// * not advertised: a present `iss` must still equal `expected_issuer` when
///   that is known; absence is tolerated.
///
/// Comparison is exact (RFC 9207 §2.4: simple string comparison, no
/// normalisation).
pub fn check_callback_issuer(
    expected_issuer: Option<&str>,
    advertised: bool,
    iss_param: Option<&str>,
) -> Result<(), IssuerMismatch> {
    match (expected_issuer, iss_param) {
        (_, None) if advertised => Err(IssuerMismatch::Missing),
        (None, _) if advertised => Err(IssuerMismatch::NoExpectedIssuer),
        (Some(expected), Some(actual)) if expected != actual => Err(IssuerMismatch::Mismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_rules() {
        let iss = Some("https://as.example");
        // Advertised.
        assert_eq!(check_callback_issuer(iss, true, iss), Ok(()));
        assert_eq!(
            check_callback_issuer(iss, true, None),
            Err(IssuerMismatch::Missing)
        );
        assert!(matches!(
            check_callback_issuer(iss, true, Some("https://evil.example")),
            Err(IssuerMismatch::Mismatch { .. })
        ));
        assert_eq!(
            check_callback_issuer(None, true, iss),
            Err(IssuerMismatch::NoExpectedIssuer)
        );
        // Trailing slash is a different issuer.
        assert!(check_callback_issuer(iss, true, Some("https://as.example/")).is_err());
        // Not advertised.
        assert_eq!(check_callback_issuer(iss, false, None), Ok(()));
        assert_eq!(check_callback_issuer(iss, false, iss), Ok(()));
        assert!(check_callback_issuer(iss, false, Some("https://evil.example")).is_err());
        assert_eq!(check_callback_issuer(None, false, Some("x")), Ok(()));
        assert_eq!(check_callback_issuer(None, false, None), Ok(()));
    }
}
