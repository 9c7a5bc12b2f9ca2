use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A scope that cannot be stored as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope {0:?} is empty or contains whitespace")]
pub struct InvalidScope(pub String);

/// A set of OAuth scopes. Providers disagree on the separator (space per
/// RFC 6749, comma for GitHub and others), so parsing and formatting take it
/// as an argument; the canonical stored form is space-separated and sorted.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scopes(BTreeSet<String>);

impl Scopes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits on `separator` and on whitespace, dropping empty parts, so a
    /// provider answering "a, b" for a comma-separated request still parses.
    pub fn parse(raw: &str, separator: &str) -> Self {
        let split_on_separator: Box<dyn Iterator<Item = &str>> = if separator.trim().is_empty() {
            Box::new(std::iter::once(raw))
        } else {
            Box::new(raw.split(separator))
        };
        Self(
            split_on_separator
                .flat_map(str::split_whitespace)
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Scopes named one by one (an API body, an import file): unlike
    /// [`Scopes::parse`], nothing is split or dropped, so a scope that is
    /// empty or contains whitespace or control characters is refused rather
    /// than silently changed.
    pub fn try_from_list<I, S>(scopes: I) -> Result<Self, InvalidScope>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for scope in scopes {
            let scope = scope.as_ref();
            if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(InvalidScope(scope.to_owned()));
            }
            set.insert(scope.to_owned());
        }
        Ok(Self(set))
    }

    pub fn format(&self, separator: &str) -> String {
        self.iter().collect::<Vec<_>>().join(separator)
    }

    pub fn includes(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }

    pub fn includes_all(&self, other: &Scopes) -> bool {
        other.0.is_subset(&self.0)
    }

    pub fn insert(&mut self, scope: impl Into<String>) {
        let scope = scope.into();
        if !scope.trim().is_empty() {
            self.0.insert(scope);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl<S: Into<String>> FromIterator<S> for Scopes {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut scopes = Scopes::new();
        for scope in iter {
            scopes.insert(scope);
        }
        scopes
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn set_semantics_and_separators() {
        let scopes = Scopes::parse("user-read-email user-library-modify user-read-email", " ");
        assert_eq!(scopes.len(), 2);
        assert!(scopes.includes("user-library-modify"));
        let github = Scopes::parse("repo, read:user", ",");
        assert_eq!(github.format(","), "read:user,repo");
        assert!(github.includes_all(&Scopes::parse("repo", " ")));
        assert!(!github.includes_all(&Scopes::parse("repo gist", " ")));
        assert!(Scopes::parse("   ", " ").is_empty());
    }

    #[test]
    fn listed_scopes_are_refused_not_repaired() {
        let scopes = Scopes::try_from_list(["repo", "read:user", "repo"]).unwrap();
        assert_eq!(scopes.to_vec(), ["read:user", "repo"]);
        for bad in ["", "a b", " repo", "repo\n", "x\u{7}"] {
            assert_eq!(
                Scopes::try_from_list(["ok", bad]),
                Err(InvalidScope(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert!(
            Scopes::try_from_list(Vec::<String>::new())
                .unwrap()
                .is_empty()
        );
    }

    proptest! {
        #[test]
        fn parse_format_round_trip(
            set in proptest::collection::btree_set("[a-zA-Z0-9:/._-]{1,20}", 0..12),
            separator in prop_oneof![Just(" "), Just(","), Just("+")]
        ) {
            let scopes: Scopes = set.iter().cloned().collect();
            let formatted = scopes.format(separator);
            let parsed = Scopes::parse(&formatted, separator);
            prop_assert_eq!(&parsed, &scopes);
            prop_assert_eq!(parsed.to_vec(), set.into_iter().collect::<Vec<_>>());
        }
    }
}
