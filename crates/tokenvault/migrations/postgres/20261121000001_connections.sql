-- One row per (user, integration). Times are Unix milliseconds (UTC).
CREATE TABLE connections (
    id                  UUID    PRIMARY KEY,
    user_id             TEXT    NOT NULL,
    integration         TEXT    NOT NULL,
    status              TEXT    NOT NULL,
    scopes              TEXT    NOT NULL DEFAULT '',
    token_type          TEXT    NOT NULL DEFAULT 'Bearer',
    expires_at          BIGINT,
    next_refresh_at     BIGINT,
    refresh_attempts    INTEGER NOT NULL DEFAULT 0,
    last_error_code     TEXT,
    last_error_message  TEXT,
    last_refreshed_at   BIGINT,
    version             BIGINT NOT NULL DEFAULT 1,
    access_token        BYTEA,
    refresh_token       BYTEA,
    data_key            BYTEA    NOT NULL,
    kek_id              TEXT    NOT NULL,
    metadata            JSONB   NOT NULL DEFAULT '{}',
    lease_owner         TEXT,
    lease_expires_at    BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (user_id, integration)
);

-- The scheduler's due query reads only refreshable rows, oldest first: O(due).
CREATE INDEX connections_due ON connections (next_refresh_at)
    WHERE next_refresh_at IS NOT NULL AND status IN ('connected', 'error');
CREATE INDEX connections_integration_status ON connections (integration, status, id);
CREATE INDEX connections_status ON connections (status, id);
CREATE INDEX connections_kek ON connections (kek_id, id);
