//! tokenvault: keep third-party OAuth tokens valid for months.
//!
//! The library holds the domain, envelope encryption, the OAuth protocol
//! client, the provider catalog and storage; the `tokenvault-server` crate
//! wires them into an HTTP service.

pub mod admin_sessions;
pub mod api_keys;
pub mod bulk;
pub mod connect;
pub mod crypto;
pub mod device;
pub mod domain;
pub mod events;
pub mod import;
pub mod integrations;
pub mod oauth;
pub mod oauth_state;
pub mod open;
pub mod privacy;
pub mod providers;
pub mod proxy;
pub mod refresh;
pub mod rotation;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod vault;
