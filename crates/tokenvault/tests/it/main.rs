//! Integration tests of the library: one binary (one link step), one module
//! per subject, shared helpers in `common`.

mod common;

mod api_keys;
mod at_rest;
mod connection_params;
mod device_sessions;
mod import;
mod key_rotation;
mod provider_fixtures;
mod refresh_model;
mod refresher;
mod state_store;
mod store_conformance;
