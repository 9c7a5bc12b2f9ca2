-- What happened to each connection, kept whether or not a webhook is
-- configured: written in the same transaction as the change it records,
-- removed after history_retention_days. Keyed by (user, integration), so a
-- reconnect (a new connection id) continues the same history.
CREATE TABLE connection_events (
    id              TEXT    PRIMARY KEY NOT NULL,
    connection_id   TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    integration     TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    error_class     TEXT,
    error_code      TEXT,
    error_message   TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX connection_events_by_connection
    ON connection_events (user_id, integration, created_at, id);
CREATE INDEX connection_events_created ON connection_events (created_at);

-- Listing across users pages by (user_id, integration) in byte order
-- (SQLite's default); each listing filter gets an index in listing order.
DROP INDEX connections_status;
CREATE INDEX connections_status ON connections (status, user_id, integration);
DROP INDEX connections_integration_status;
CREATE INDEX connections_integration_status ON connections (integration, status, user_id);
