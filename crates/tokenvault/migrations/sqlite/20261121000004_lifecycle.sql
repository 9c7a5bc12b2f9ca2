-- Token lifecycle: failure streaks, the webhook outbox, misconfigured integrations.

-- Start of the current streak of failed refresh runs (NULL when the last run
-- succeeded); a streak spanning 24 h turns the connection to 'error'.
ALTER TABLE connections ADD COLUMN failing_since BIGINT;

-- Transactional outbox: events are inserted in the same transaction as the
-- change they describe and delivered at least once by the webhook worker.
CREATE TABLE webhook_outbox (
    id                  TEXT PRIMARY KEY NOT NULL,
    event_type          TEXT    NOT NULL,
    -- The exact JSON body that is signed and sent.
    payload             TEXT    NOT NULL,
    created_at          BIGINT  NOT NULL,
    next_attempt_at     BIGINT  NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    delivered_at        BIGINT,
    -- Set when delivery was given up after the last attempt.
    abandoned_at        BIGINT,
    last_error          TEXT,
    lease_owner         TEXT,
    lease_expires_at    BIGINT
);
CREATE INDEX webhook_outbox_pending ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;

-- An integration whose client credentials the provider rejected. Refreshes
-- for it pause until its configuration (fingerprint) changes or an admin
-- clears the row; user connections keep their status meanwhile.
CREATE TABLE integration_health (
    integration         TEXT    PRIMARY KEY NOT NULL,
    config_fingerprint  TEXT    NOT NULL,
    error_code          TEXT    NOT NULL,
    error_message       TEXT    NOT NULL,
    misconfigured_at    BIGINT  NOT NULL
);
