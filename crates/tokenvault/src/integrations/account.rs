//! After the grant: revocation at the provider and the account profile.

use secrecy::SecretString;
use url::Url;

use crate::domain::{AccessToken, TokenSet};
use crate::oauth::OAuthError;
use crate::providers::RevocationStyle;

use super::*;

impl Integration {
    /// Revokes `tokens` at the provider, per its `revocation_style`:
    ///
    /// * `rfc7009`: the refresh token first (`token_type_hint=refresh_token`;
    ///   that ends the whole grant at most providers), then the access token.
    ///   A token the provider reports as `invalid_token` (already revoked or
    ///   expired — Google answers 400 for those) counts as revoked.
    /// * `github_grant`: deletes the app's grant for the user (all tokens).
    /// * `none`: nothing to call; returns `Ok(false)` — "not revoked at the
    ///   provider", the user has to remove the app there.
    ///
    /// `Ok(true)` means the provider confirmed the revocation.
    pub async fn revoke(&self, tokens: &TokenSet) -> Result<bool, OAuthError> {
        let missing_url = || {
            OAuthError::Config(format!(
                "provider `{}` has no usable revocation_url",
                self.spec.key
            ))
        };
        let access = SecretString::from(tokens.access_token.expose().to_owned());
        match self.spec.revocation_style {
            RevocationStyle::None => Ok(false),
            RevocationStyle::Rfc7009 => {
                let url = self
                    .spec
                    .revocation_url_for(&self.auth.client_id)
                    .ok_or_else(missing_url)?;
                self.ready(&url)?;
                if let Some(refresh) = &tokens.refresh_token {
                    let refresh = SecretString::from(refresh.expose().to_owned());
                    self.revoke_one(&url, &refresh, "refresh_token").await?;
                }
                self.revoke_one(&url, &access, "access_token").await?;
                Ok(true)
            }
            RevocationStyle::GithubGrant => {
                let url = self
                    .spec
                    .revocation_url_for(&self.auth.client_id)
                    .ok_or_else(missing_url)?;
                self.ready(&url)?;
                with_client_auth!(self, |auth| {
                    self.oauth.revoke_github_grant(&url, auth, &access).await
                })?;
                Ok(true)
            }
        }
    }

    pub(super) async fn revoke_one(
        &self,
        url: &Url,
        token: &SecretString,
        hint: &str,
    ) -> Result<(), OAuthError> {
        let revoked = with_client_auth!(self, |auth| {
            self.oauth.revoke(url, auth, token, Some(hint)).await
        });
        match revoked {
            Err(err) if err.oauth_error_code() == Some("invalid_token") => Ok(()),
            other => other,
        }
    }

    /// Reads the account profile through the catalog's `userinfo_url` and
    /// `profile` mapping. `Ok(None)` when the provider has no profile
    /// endpoint (Bing Webmaster Tools). A 401 is an error whose
    /// [`OAuthError::status`] is 401 (refresh, then retry).
    pub async fn userinfo(
        &self,
        access_token: &AccessToken,
    ) -> Result<Option<Profile>, OAuthError> {
        let Some(url) = &self.spec.userinfo_url else {
            return Ok(None);
        };
        let url = self.ready(url)?;
        let Some(mapping) = &self.spec.profile else {
            return Err(OAuthError::Config(format!(
                "provider `{}` has a userinfo_url but no profile mapping",
                self.spec.key
            )));
        };
        let raw = self
            .oauth
            .get_json(
                url,
                self.api_headers_for(access_token, crate::domain::TokenType::Bearer)?,
                &SecretString::from(access_token.expose().to_owned()),
            )
            .await?;
        let found = mapping.extract(&raw);
        let id = found.id.ok_or_else(|| {
            OAuthError::InvalidResponse(format!(
                "profile response has no account id at {}",
                mapping.id.join(" / ")
            ))
        })?;
        Ok(Some(Profile {
            id,
            email: found.email,
            display_name: found.display_name,
            raw,
        }))
    }
}
