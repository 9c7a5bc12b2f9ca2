//! The token domain: validated identifiers, secrets that never print, scopes,
//! token sets and the connection status machine. No I/O lives here.

mod clock;
mod ids;
mod scopes;
mod secret;
mod status;
mod token;

pub use clock::{Clock, ManualClock, SystemClock};
pub use ids::{ConnectionId, DeviceSessionId, IdError, IntegrationKey, UserId};
pub use scopes::{InvalidScope, Scopes};
pub use secret::{AccessToken, RefreshToken, mask};
pub use status::{ConnectionStatus, InvalidTransition, UnknownStatus};
pub use token::{TokenSet, TokenType, UnknownTokenType};
