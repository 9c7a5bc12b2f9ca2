//! The catalog: resolved entries, merging user files, pending discovery.

use std::collections::BTreeMap;

use url::Url;

use super::discovery::*;
use super::raw::*;
use super::resolve::*;
use super::*;

/// The resolved provider catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    raw: RawCatalog,
    providers: BTreeMap<String, ProviderSpec>,
    pending: BTreeMap<String, PendingDiscovery>,
}

impl From<Catalog> for RawCatalog {
    fn from(catalog: Catalog) -> Self {
        catalog.raw
    }
}

impl Catalog {
    /// The embedded catalog. Its validity (https only, every entry resolves)
    /// is guaranteed by this module's unit tests.
    pub fn builtin() -> Catalog {
        Self::parse(BUILTIN_CATALOG_TOML, UrlPolicy::HttpsOnly)
            .unwrap_or_else(|e| panic!("built-in provider catalog is invalid: {e}"))
    }

    /// A standalone catalog from a TOML file (aliases must resolve inside it;
    /// http URLs are accepted). To extend the built-in catalog use
    /// [`Catalog::merge_toml_str`].
    pub fn from_toml_str(text: &str) -> Result<Catalog, CatalogError> {
        Self::parse(text, UrlPolicy::AllowHttp)
    }

    pub(super) fn parse(text: &str, policy: UrlPolicy) -> Result<Catalog, CatalogError> {
        Self::from_raw(RawCatalog::from_toml_str(text)?, policy)
    }

    fn from_raw(raw: RawCatalog, policy: UrlPolicy) -> Result<Catalog, CatalogError> {
        let mut providers = BTreeMap::new();
        let mut pending = BTreeMap::new();
        for key in raw.providers.keys() {
            let (flat, alias_of) = flatten_alias(&raw, key)?;
            match resolve_entry(key, flat, alias_of, policy)? {
                Resolved::Ready(spec) => {
                    providers.insert(key.clone(), *spec);
                }
                Resolved::Pending(p) => {
                    pending.insert(key.clone(), *p);
                }
            }
        }
        Ok(Catalog {
            raw,
            providers,
            pending,
        })
    }

    /// Layer `user` over this catalog: new keys are added, existing keys are
    /// overridden field by field (e.g. only `api_base_url`), then everything
    /// is re-resolved (aliases see the overridden base entries). Accepts a
    /// [`RawCatalog`] or another [`Catalog`].
    pub fn merge(self, user: impl Into<RawCatalog>) -> Result<Catalog, CatalogError> {
        let mut raw = self.raw;
        raw.overlay(user.into());
        // User values may use http (operator's choice); built-in values were
        // already checked for https when the built-in catalog was loaded.
        Self::from_raw(raw, UrlPolicy::AllowHttp)
    }

    /// [`Catalog::merge`] with a user TOML file.
    pub fn merge_toml_str(self, user_toml: &str) -> Result<Catalog, CatalogError> {
        self.merge(RawCatalog::from_toml_str(user_toml)?)
    }

    /// A ready provider (pending discovery entries are not returned).
    pub fn get(&self, key: &str) -> Option<&ProviderSpec> {
        self.providers.get(key)
    }

    /// Keys of ready providers, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.providers.keys().map(String::as_str)
    }

    /// Ready providers, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ProviderSpec)> {
        self.providers.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// `discovery = true` entries not discovered yet (with or without issuer).
    pub fn pending_discovery(&self) -> impl Iterator<Item = &PendingDiscovery> {
        self.pending.values()
    }

    /// The raw entries this catalog was resolved from.
    pub fn raw(&self) -> &RawCatalog {
        &self.raw
    }

    /// Discover every pending entry that has an issuer; the entry's own fields
    /// (display name, scopes, profile, ...) override discovered values.
    /// Entries without an issuer stay pending. Returns how many were
    /// discovered.
    pub async fn discover_pending(
        &mut self,
        http: &reqwest::Client,
    ) -> Result<usize, CatalogError> {
        let ready: Vec<(String, Url)> = self
            .pending
            .values()
            .filter_map(|p| p.issuer.clone().map(|i| (p.key.clone(), i)))
            .collect();
        for (key, issuer) in &ready {
            let spec = self.discover_entry(key, Some(issuer), http).await?;
            self.providers.insert(key.clone(), spec);
            self.pending.remove(key);
        }
        Ok(ready.len())
    }

    /// Discover one pending entry without changing the catalog, e.g. for an
    /// integration that names the generic `oidc` entry together with its own
    /// issuer. `issuer` overrides the entry's; one of the two must be set.
    /// The entry's own fields override discovered values, as in
    /// [`Catalog::discover_pending`].
    pub async fn discover_entry(
        &self,
        key: &str,
        issuer: Option<&Url>,
        http: &reqwest::Client,
    ) -> Result<ProviderSpec, CatalogError> {
        let pending = self
            .pending
            .get(key)
            .ok_or_else(|| invalid(key, "discovery", "not a pending discovery entry"))?;
        let issuer = issuer
            .or(pending.issuer.as_ref())
            .ok_or_else(|| invalid(key, "issuer", "required for discovery"))?;
        let mut merged = discover_raw(http, issuer, key).await?;
        if let Some(method) = pending.overrides.token_auth_method {
            // The entry's explicit method wins over what discovery offered.
            merged.public_client = Some(method == TokenAuthMethod::None);
        }
        let mut overrides = pending.overrides.clone();
        overrides.discovery = None;
        // The metadata's issuer string is authoritative (it was checked
        // against the configured one).
        overrides.issuer = None;
        merged.overlay(&overrides);
        merged.discovery = Some(false);
        match resolve_entry(key, merged, pending.alias_of.clone(), UrlPolicy::AllowHttp)? {
            Resolved::Ready(spec) => Ok(*spec),
            Resolved::Pending(_) => unreachable!("discovery flag was cleared"),
        }
    }
}

// ---------------------------------------------------------------------------
// OIDC discovery
// ---------------------------------------------------------------------------
