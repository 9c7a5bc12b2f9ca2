use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a user's connection to an integration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Tokens are usable or refreshable.
    Connected,
    /// The provider rejected the grant (revoked, expired refresh token): only
    /// the user can fix it by connecting again.
    NeedsReauth,
    /// Refreshes have failed for a long time for reasons other than the grant.
    Error,
    /// The access token expired and there is no way to refresh it.
    Expired,
    /// Revoked by the application; tokens are erased.
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a connection cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: ConnectionStatus,
    pub to: ConnectionStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown connection status {0:?}; expected one of connected, needs_reauth, error, expired, disconnected"
)]
pub struct UnknownStatus(pub String);

impl ConnectionStatus {
    pub const ALL: [ConnectionStatus; 5] = [
        Self::Connected,
        Self::NeedsReauth,
        Self::Error,
        Self::Expired,
        Self::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::NeedsReauth => "needs_reauth",
            Self::Error => "error",
            Self::Expired => "expired",
            Self::Disconnected => "disconnected",
        }
    }

    /// The one place that says which status changes are legal. A new grant
    /// (the user connects again) may revive any connection; a failure can only
    /// befall a connection that still has tokens to fail with.
    pub fn can_become(self, to: ConnectionStatus) -> bool {
        use ConnectionStatus::*;
        if self == to {
            return true;
        }
        match (self, to) {
            (_, Connected) | (_, Disconnected) => true,
            (Connected | Error, NeedsReauth | Error | Expired) => true,
            (NeedsReauth | Expired | Disconnected, _) => false,
        }
    }

    pub fn transition(self, to: ConnectionStatus) -> Result<ConnectionStatus, InvalidTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    /// Whether the connection still holds tokens worth refreshing.
    pub fn is_refreshable(self) -> bool {
        matches!(self, Self::Connected | Self::Error)
    }
}

impl fmt::Display for ConnectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnectionStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionStatus::{self, *};

    /// The full matrix, spelled out so a change to the rules is a visible diff.
    #[test]
    fn transition_matrix() {
        let allowed: [(ConnectionStatus, [bool; 5]); 5] = [
            //              connected needs_reauth error  expired disconnected
            (Connected, [true, true, true, true, true]),
            (NeedsReauth, [true, true, false, false, true]),
            (Error, [true, true, true, true, true]),
            (Expired, [true, false, false, true, true]),
            (Disconnected, [true, false, false, false, true]),
        ];
        for (from, row) in allowed {
            for (to, expected) in ConnectionStatus::ALL.into_iter().zip(row) {
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), expected);
            }
        }
        let err = Disconnected.transition(NeedsReauth).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a connection cannot go from disconnected to needs_reauth"
        );
    }

    #[test]
    fn round_trips_through_its_name() {
        for status in ConnectionStatus::ALL {
            assert_eq!(status.as_str().parse::<ConnectionStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert!("revoked".parse::<ConnectionStatus>().is_err());
    }
}
