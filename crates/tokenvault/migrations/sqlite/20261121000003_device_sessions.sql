-- Device authorization grants (RFC 8628) that tokenvault polls for. The
-- device_code is sealed (AES-256-GCM, associated data bound to the session
-- id) under the row's own data key, stored wrapped by a master key, and erased
-- once the session is finished. Times are Unix milliseconds (UTC).
CREATE TABLE device_sessions (
    id                  TEXT    PRIMARY KEY NOT NULL,
    user_id             TEXT    NOT NULL,
    integration         TEXT    NOT NULL,
    scopes              TEXT    NOT NULL DEFAULT '',
    status              TEXT    NOT NULL,
    interval_secs       INTEGER NOT NULL,
    next_poll_at        INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    device_code         BLOB,
    data_key            BLOB    NOT NULL,
    kek_id              TEXT    NOT NULL,
    last_error_code     TEXT,
    last_error_message  TEXT,
    lease_owner         TEXT,
    lease_expires_at    INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

-- The pollers' due query reads only pending rows, soonest first: O(due).
CREATE INDEX device_sessions_due ON device_sessions (next_poll_at) WHERE status = 'pending';
CREATE INDEX device_sessions_finished ON device_sessions (updated_at) WHERE status <> 'pending';
