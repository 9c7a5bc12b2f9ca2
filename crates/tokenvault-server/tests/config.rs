//! The shipped example configuration stays valid.

use tokenvault::domain::IntegrationKey;
use tokenvault_server::config::{Config, Environment};

#[test]
fn example_config_parses_with_its_integration() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tokenvault.example.toml"
    ));
    let config = Config::load(Some(path)).unwrap();
    assert_eq!(config.environment, Environment::Development);
    assert_eq!(config.state_ttl_secs, 600);
    assert_eq!(config.allowed_redirect_origins, ["http://localhost:3000"]);
    let spotify = &config.integrations[&IntegrationKey::parse("spotify").unwrap()];
    assert_eq!(spotify.provider, "spotify");
}

#[test]
fn a_missing_explicit_config_file_is_an_error() {
    let err = Config::load(Some(std::path::Path::new("/nonexistent/tokenvault.toml"))).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}
