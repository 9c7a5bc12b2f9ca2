//! Integration tests of the service: one binary (one link step), one module
//! per subject, shared helpers in `common`.

mod common;

mod admin;
mod api_keys;
mod bulk_actions;
mod chaos;
mod cli;
mod config;
mod connect_ui;
mod connection_params;
mod device_flow;
mod flows;
mod fuzz;
mod http_basics;
mod import;
mod lifecycle;
mod listing;
mod log_privacy;
mod many_instances;
mod metrics;
mod openapi;
mod proxy;
mod secret_echo;
mod secret_rotation;
