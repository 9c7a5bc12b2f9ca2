//! tokenvault: keep third-party OAuth tokens valid for months.
//!
//! The library holds the domain, envelope encryption and storage; the
//! `tokenvault-server` crate wires them into an HTTP service.

pub mod crypto;
pub mod domain;
pub mod rotation;
pub mod store;
#[doc(hidden)]
pub mod testing;
