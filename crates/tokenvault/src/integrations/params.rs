//! Connection parameters at work: the values a connection brings (from the
//! connect session, the callback, the token response or one post-connect
//! call), checked, and filled into the entry's URL templates before any
//! request (see [`crate::providers::params`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use secrecy::SecretString;
use url::Url;

use crate::domain::AccessToken;
use crate::oauth::OAuthError;
use crate::providers::params::{self, ParamError};
use crate::providers::{ConnectionParamSpec, ConnectionParams, ParamSource};

use super::*;

impl Integration {
    /// The entry's declared connection parameters.
    pub fn connection_param_specs(&self) -> &[ConnectionParamSpec] {
        &self.spec.connection_params
    }

    /// Whether a connect session must carry `connection_params`.
    pub fn needs_session_params(&self) -> bool {
        self.spec
            .connection_params
            .iter()
            .any(|p| p.source == ParamSource::Session)
    }

    /// Checks the parameters an application passes when it creates a
    /// connect session: every `session` parameter, each valid, and nothing
    /// else. Returns the values to store.
    pub fn check_session_params(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<ConnectionParams, ParamError> {
        let known = || {
            let names: Vec<&str> = self
                .spec
                .connection_params
                .iter()
                .filter(|p| p.source == ParamSource::Session)
                .map(|p| p.name.as_str())
                .collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        for name in given.keys() {
            match self.spec.connection_params.iter().find(|p| &p.name == name) {
                None => {
                    return Err(ParamError::Unknown {
                        name: name.chars().take(64).collect(),
                        known: known(),
                    });
                }
                Some(spec) if spec.source != ParamSource::Session => {
                    return Err(ParamError::NotSettable {
                        name: name.clone(),
                        source_name: spec.source.as_str(),
                    });
                }
                Some(_) => {}
            }
        }
        let mut values = ConnectionParams::new();
        for spec in &self.spec.connection_params {
            if spec.source != ParamSource::Session {
                continue;
            }
            let raw = given.get(&spec.name).ok_or_else(|| ParamError::Missing {
                name: spec.name.clone(),
                description: spec.description.clone(),
            })?;
            values.insert(spec.name.clone(), spec.check(raw)?);
        }
        Ok(values)
    }

    /// The entry's `callback` parameters, read from a callback's query and
    /// checked; every one is required.
    pub fn check_callback_params(
        &self,
        query: &BTreeMap<String, String>,
    ) -> Result<ConnectionParams, ParamError> {
        let mut values = ConnectionParams::new();
        for spec in &self.spec.connection_params {
            let ParamSource::Callback { query: name } = &spec.source else {
                continue;
            };
            let raw = query.get(name).ok_or_else(|| ParamError::Missing {
                name: spec.name.clone(),
                description: format!("{} (the callback has no `{name}`)", spec.description),
            })?;
            values.insert(spec.name.clone(), spec.check(raw)?);
        }
        Ok(values)
    }

    /// This integration for one connection: every URL template whose values
    /// are all in `values` filled with them, after each value is checked
    /// again (a stored value is never trusted to still be valid). Templates
    /// missing a value stay templates, and a call through one fails before
    /// any request. Borrowed when the entry has no parameters.
    pub fn for_connection(&self, values: &ConnectionParams) -> Result<Cow<'_, Self>, ParamError> {
        if self.spec.connection_params.is_empty() {
            return Ok(Cow::Borrowed(self));
        }
        let mut checked = ConnectionParams::new();
        for spec in &self.spec.connection_params {
            if let Some(value) = values.get(&spec.name) {
                checked.insert(spec.name.clone(), spec.check_value(value)?);
            }
        }
        let mut with_client_id = checked.clone();
        with_client_id.insert("client_id", self.auth.client_id.clone());
        let fill = |url: &Url, values: &ConnectionParams| -> Result<Url, ParamError> {
            if params::first_missing(url, values).is_some() {
                return Ok(url.clone());
            }
            params::fill(url, values).map_err(|reason| ParamError::Invalid {
                name: params::placeholders(url)
                    .ok()
                    .and_then(|p| p.into_iter().next())
                    .map_or_else(String::new, |(name, _)| name),
                reason,
            })
        };
        let mut filled = self.clone();
        let spec = &mut filled.spec;
        spec.authorization_url = fill(&spec.authorization_url, &checked)?;
        spec.token_url = fill(&spec.token_url, &checked)?;
        spec.refresh_url = fill(&spec.refresh_url, &checked)?;
        for url in [
            &mut spec.device_authorization_url,
            &mut spec.userinfo_url,
            &mut spec.api_base_url,
        ]
        .into_iter()
        .flatten()
        {
            *url = fill(url, &checked)?;
        }
        if let Some(url) = &mut spec.revocation_url {
            *url = fill(url, &with_client_id)?;
        }
        // Header values naming a parameter (checked values: the pattern
        // keeps them header-safe; a header naming a missing one is dropped
        // rather than sent with a placeholder).
        spec.api_headers = spec
            .api_headers
            .iter()
            .filter_map(|(header, value)| {
                let mut filled = value.clone();
                for (name, param) in checked.iter() {
                    filled = filled.replace(&format!("{{{name}}}"), param);
                }
                let unfilled = filled.replace("{client_id}", "").contains('{');
                (!unfilled).then(|| (header.clone(), filled))
            })
            .collect();
        Ok(Cow::Owned(filled))
    }

    /// [`Integration::for_connection`] with the parameters a stored
    /// connection keeps in its metadata; an error is a
    /// [`OAuthError::ConnectionParams`] (this connection must reconnect).
    pub fn for_stored(&self, metadata: &serde_json::Value) -> Result<Cow<'_, Self>, OAuthError> {
        if self.spec.connection_params.is_empty() {
            return Ok(Cow::Borrowed(self));
        }
        self.for_connection(&ConnectionParams::from_metadata(metadata))
            .map_err(|e| OAuthError::ConnectionParams(e.to_string()))
    }

    /// `url`, unless it is a template still missing a connection parameter:
    /// then an error, before any request.
    pub(super) fn ready<'a>(&self, url: &'a Url) -> Result<&'a Url, OAuthError> {
        if params::is_template(url) {
            let missing = params::placeholders(url)
                .ok()
                .and_then(|p| p.into_iter().next())
                .map_or_else(String::new, |(name, _)| name);
            return Err(OAuthError::ConnectionParams(format!(
                "this connection has no value for connection parameter `{missing}` of provider `{}`",
                self.spec.key
            )));
        }
        Ok(url)
    }

    /// The API base URL for this connection (see
    /// [`Integration::for_connection`]); `Ok(None)` when the entry has none.
    pub fn api_base_url(&self) -> Result<Option<&Url>, OAuthError> {
        self.spec
            .api_base_url
            .as_ref()
            .map(|url| self.ready(url))
            .transpose()
    }

    /// Every connection parameter of a new grant, checked: `known` holds the
    /// session's and the callback's checked values, the grant the
    /// token response's; `post_connect` parameters are read now with the
    /// new access token. Any missing or invalid value is an error — the
    /// connection must not be stored.
    pub async fn connection_params_for(
        &self,
        known: &ConnectionParams,
        grant: &Grant,
    ) -> Result<ConnectionParams, ParamError> {
        let mut values = ConnectionParams::new();
        let mut post_connect: Vec<&ConnectionParamSpec> = Vec::new();
        for spec in &self.spec.connection_params {
            let missing = || ParamError::Missing {
                name: spec.name.clone(),
                description: spec.description.clone(),
            };
            let value = match &spec.source {
                ParamSource::Session | ParamSource::Callback { .. } => {
                    spec.check_value(known.get(&spec.name).ok_or_else(missing)?)?
                }
                ParamSource::TokenResponse { .. } => spec.check(
                    grant
                        .token_response_params
                        .get(&spec.name)
                        .ok_or_else(missing)?,
                )?,
                ParamSource::PostConnect { .. } => {
                    post_connect.push(spec);
                    continue;
                }
            };
            values.insert(spec.name.clone(), value);
        }
        // One GET per distinct request, whatever the number of parameters
        // read from it.
        let mut documents: Vec<(Url, serde_json::Value)> = Vec::new();
        for spec in post_connect {
            let ParamSource::PostConnect { request, pointer } = &spec.source else {
                continue;
            };
            let unavailable = |reason: String| ParamError::Unavailable {
                name: spec.name.clone(),
                reason,
            };
            let url = params::fill(request, &values).map_err(unavailable)?;
            let document = match documents.iter().find(|(u, _)| *u == url) {
                Some((_, document)) => document.clone(),
                None => {
                    let document = self
                        .get_json(&url, &grant.tokens.access_token)
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    documents.push((url, document.clone()));
                    document
                }
            };
            let raw = document
                .pointer(pointer)
                .and_then(super::grants::scalar)
                .ok_or_else(|| ParamError::Missing {
                    name: spec.name.clone(),
                    description: format!("{} (not in the answer at {pointer})", spec.description),
                })?;
            values.insert(spec.name.clone(), spec.check(&raw)?);
        }
        Ok(values)
    }

    /// GET `url` with the access token, as the entry's API expects it.
    async fn get_json(
        &self,
        url: &Url,
        access_token: &AccessToken,
    ) -> Result<serde_json::Value, OAuthError> {
        self.oauth
            .get_json(
                url,
                self.api_headers_for(access_token, crate::domain::TokenType::Bearer)?,
                &SecretString::from(access_token.expose().to_owned()),
            )
            .await
    }
}
