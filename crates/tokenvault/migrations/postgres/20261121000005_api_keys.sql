-- API keys for /v1. Only a SHA-256 digest of each key is kept: keys are 256
-- random bits, so a fast hash is enough and a leaked table yields no key.
CREATE TABLE api_keys (
    -- Public identifier, also the key's visible prefix (`tvk_<id>_…`).
    id              TEXT    PRIMARY KEY,
    name            TEXT    NOT NULL,
    -- read-tokens | manage | admin
    scope           TEXT    NOT NULL,
    -- Lowercase hex SHA-256 of the whole key.
    digest          TEXT    NOT NULL UNIQUE,
    created_at      BIGINT  NOT NULL,
    -- Updated at most about once a minute per key.
    last_used_at    BIGINT,
    revoked_at      BIGINT
);
