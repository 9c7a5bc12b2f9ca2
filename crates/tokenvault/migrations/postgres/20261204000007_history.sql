-- What happened to each connection, kept whether or not a webhook is
-- configured: written in the same transaction as the change it records,
-- removed after history_retention_days. Keyed by (user, integration), so a
-- reconnect (a new connection id) continues the same history.
CREATE TABLE connection_events (
    id              UUID    PRIMARY KEY,
    connection_id   UUID    NOT NULL,
    user_id         TEXT    COLLATE "C" NOT NULL,
    integration     TEXT    COLLATE "C" NOT NULL,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    error_class     TEXT,
    error_code      TEXT,
    error_message   TEXT,
    created_at      BIGINT  NOT NULL
);
CREATE INDEX connection_events_by_connection
    ON connection_events (user_id, integration, created_at, id);
CREATE INDEX connection_events_created ON connection_events (created_at);

-- Listing across users pages by (user_id, integration). Byte order
-- ("C") makes that order, and a user-id prefix as a range, the same on
-- every database whatever its default collation; the unique index is
-- rebuilt in it. Each listing filter gets an index in listing order.
ALTER TABLE connections ALTER COLUMN user_id TYPE TEXT COLLATE "C";
ALTER TABLE connections ALTER COLUMN integration TYPE TEXT COLLATE "C";
DROP INDEX connections_status;
CREATE INDEX connections_status ON connections (status, user_id, integration);
DROP INDEX connections_integration_status;
CREATE INDEX connections_integration_status ON connections (integration, status, user_id);
