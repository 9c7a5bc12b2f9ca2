//! The tokenvault service: configuration, HTTP, operator commands. The
//! binary (`main.rs`) only parses the command line and dispatches here.

pub mod api_keys;
pub mod app;
pub mod bulk;
pub mod config;
pub mod config_check;
pub mod config_keys;
pub mod connections;
pub mod http;
pub mod import;
pub mod integrations_env;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod providers_cli;
pub mod wiring;
