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
    assert_eq!(
        config.metrics_bind,
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464)))
    );
}

#[test]
fn a_missing_explicit_config_file_is_an_error() {
    let err = Config::load(Some(std::path::Path::new("/nonexistent/tokenvault.toml"))).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn metrics_bind_defaults_to_localhost_9464_and_off_or_empty_disables_it() {
    let default = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464)));
    assert_eq!(Config::default().metrics_bind, default);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenvault.toml");
    for (line, expected) in [
        ("", default),
        ("metrics_bind = \"off\"", None),
        ("metrics_bind = \"OFF\"", None),
        ("metrics_bind = \"\"", None),
        (
            "metrics_bind = \"0.0.0.0:9100\"",
            Some(std::net::SocketAddr::from(([0, 0, 0, 0], 9100))),
        ),
    ] {
        std::fs::write(&path, line).unwrap();
        assert_eq!(
            Config::load(Some(&path)).unwrap().metrics_bind,
            expected,
            "{line}"
        );
    }
    std::fs::write(&path, "metrics_bind = \"localhost\"").unwrap();
    let err = Config::load(Some(&path)).unwrap_err();
    assert!(err.to_string().contains("not a socket address"), "{err}");
}
