-- Device authorization grants (RFC 8628) that tokenvault polls for. The
-- device_code is sealed (AES-256-GCM, associated data bound to the session
-- id) under the row's own data key, stored wrapped by a master key, and erased
-- once the session is finished. Times are Unix milliseconds (UTC).
CREATE TABLE device_sessions (
    id                  TEXT    PRIMARY KEY,
    user_id             TEXT    NOT NULL,
    integration         TEXT    NOT NULL,
    scopes              TEXT    NOT NULL DEFAULT '',
    status              TEXT    NOT NULL,
    interval_secs       BIGINT  NOT NULL,
    next_poll_at        BIGINT  NOT NULL,
    expires_at          BIGINT  NOT NULL,
    device_code         BYTEA,
    data_key            BYTEA   NOT NULL,
    kek_id              TEXT    NOT NULL,
    last_error_code     TEXT,
    last_error_message  TEXT,
    lease_owner         TEXT,
    lease_expires_at    BIGINT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
);

-- The pollers' due query reads only pending rows, soonest first: O(due).
CREATE INDEX device_sessions_due ON device_sessions (next_poll_at) WHERE status = 'pending';
CREATE INDEX device_sessions_finished ON device_sessions (updated_at) WHERE status <> 'pending';
