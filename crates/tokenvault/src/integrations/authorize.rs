//! The authorization request: the URL the browser is sent to, and the
//! callback's issuer check.

use std::collections::BTreeMap;

use url::Url;

use crate::domain::Scopes;
use crate::oauth::{
    AuthorizeRequest, IssuerMismatch, Pkce, build_authorize_url, check_callback_issuer,
};
use crate::providers::AuthorizeStyle;

use super::*;

impl Integration {
    /// The URL to send the user's browser to. `scopes: None` requests the
    /// integration's default scopes. PKCE parameters are sent only when
    /// [`Integration::wants_pkce`] (a `pkce` passed for a provider without
    /// PKCE support is ignored; for `pkce = "required"` the caller must pass
    /// one). Provider parameters come from the catalog
    /// ([`ProviderSpec::authorize_params_for`]: Google's
    /// `access_type=offline` & `prompt=consent`, `prompt=consent` for OIDC
    /// `offline_access`).
    pub fn authorize_url(&self, state: &str, pkce: Option<&Pkce>, scopes: Option<&Scopes>) -> Url {
        self.authorize_url_with(state, pkce, scopes, &[])
    }

    /// [`Integration::authorize_url`] with per-request parameters
    /// (`login_hint`, or Wix's `token` from its redirect to the app URL).
    /// They override catalog and configured parameters, never the ones the
    /// flow sets.
    pub fn authorize_url_with(
        &self,
        state: &str,
        pkce: Option<&Pkce>,
        scopes: Option<&Scopes>,
        extra_params: &[(String, String)],
    ) -> Url {
        match self.spec.authorize_style {
            AuthorizeStyle::Oauth2 => {
                let scopes = self.requested_scopes(scopes);
                let mut params = self.spec.authorize_params_for(&scopes);
                for (k, v) in extra_params {
                    params.insert(k.clone(), v.clone());
                }
                let params: Vec<(String, String)> = params.into_iter().collect();
                let challenge = pkce.filter(|_| self.wants_pkce()).map(Pkce::challenge);
                let url = build_authorize_url(&AuthorizeRequest {
                    authorization_url: &self.spec.authorization_url,
                    client_id: &self.auth.client_id,
                    redirect_uri: self.redirect_uri.as_str(),
                    scopes: &scopes,
                    scope_separator: &self.spec.scope_separator,
                    state,
                    code_challenge: challenge,
                    extra_params: &params,
                });
                match &self.spec.client_id_param {
                    None => url,
                    Some(name) => rename_query_param(url, "client_id", name),
                }
            }
            AuthorizeStyle::WixInstaller => self.wix_installer_url(state, extra_params),
        }
    }

    /// `https://www.wix.com/installer/install?appId=…&redirectUrl=…&state=…&token=…`
    pub(super) fn wix_installer_url(&self, state: &str, extra_params: &[(String, String)]) -> Url {
        const CORE: [&str; 3] = ["appId", "redirectUrl", "state"];
        let mut extras: BTreeMap<&str, &str> = self
            .spec
            .authorize_params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in extra_params {
            extras.insert(k.as_str(), v.as_str());
        }
        extras.retain(|k, _| !CORE.contains(k));
        let mut url = self.spec.authorization_url.clone();
        let existing: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !CORE.contains(&k.as_ref()) && !extras.contains_key(k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &existing {
                q.append_pair(k, v);
            }
            q.append_pair("appId", &self.auth.client_id);
            q.append_pair("redirectUrl", self.redirect_uri.as_str());
            q.append_pair("state", state);
            for (k, v) in &extras {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// RFC 9207 check of the callback's `iss` parameter against the
    /// provider's issuer.
    pub fn check_callback_issuer(&self, iss: Option<&str>) -> Result<(), IssuerMismatch> {
        check_callback_issuer(
            self.spec.issuer.as_deref(),
            self.spec.iss_parameter_supported,
            iss,
        )
    }
}

/// `url` with its `from` query parameter named `to` (order kept).
fn rename_query_param(mut url: Url, from: &str, to: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let k = if k == from {
                to.to_owned()
            } else {
                k.into_owned()
            };
            (k, v.into_owned())
        })
        .collect();
    url.set_query(None);
    url.query_pairs_mut().extend_pairs(pairs);
    url
}
