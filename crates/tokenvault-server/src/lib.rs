//! The tokenvault service: configuration, HTTP, operator commands. The
//! binary (`main.rs`) only parses the command line and dispatches here.

pub mod config;
pub mod http;
pub mod import;
pub mod keys;
pub mod wiring;
