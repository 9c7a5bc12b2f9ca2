-- Bulk actions: one provider API request per targeted user, run by workers
-- at a bounded rate. Each action runs on one instance at a time (lease).
CREATE TABLE bulk_actions (
    id                  TEXT    PRIMARY KEY NOT NULL,
    integration         TEXT    NOT NULL,
    -- The request as accepted (method, path, query, headers, body) and how
    -- the users were chosen, as JSON.
    spec                TEXT    NOT NULL,
    -- Sends before this time are held back.
    not_before          BIGINT  NOT NULL,
    rate_per_second     REAL   NOT NULL,
    -- active | completed | cancelled
    state               TEXT    NOT NULL,
    total               BIGINT  NOT NULL,
    created_at          BIGINT  NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    lease_owner         TEXT,
    lease_until         BIGINT
);
CREATE INDEX bulk_actions_runnable ON bulk_actions (not_before) WHERE state = 'active';

CREATE TABLE bulk_items (
    action_id           TEXT    NOT NULL REFERENCES bulk_actions (id) ON DELETE CASCADE,
    -- Position in the action: items run in this order.
    seq                 BIGINT  NOT NULL,
    user_id             TEXT    NOT NULL,
    -- pending | running | succeeded | failed | skipped | cancelled
    state               TEXT    NOT NULL,
    -- Requests started for this item (every send counts, retries included).
    attempts            INTEGER NOT NULL DEFAULT 0,
    -- Answers that were 429 (not counted as failures).
    rate_limited        INTEGER NOT NULL DEFAULT 0,
    -- Transient failures (5xx, network, provider unavailable).
    failures            INTEGER NOT NULL DEFAULT 0,
    -- Sends whose instance stopped before their outcome was recorded.
    interrupted         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     BIGINT  NOT NULL,
    -- The provider's HTTP status of the last answer.
    status_code         INTEGER,
    error_code          TEXT,
    error_message       TEXT,
    updated_at          BIGINT  NOT NULL,
    finished_at         BIGINT,
    PRIMARY KEY (action_id, seq),
    UNIQUE (action_id, user_id)
);
CREATE INDEX bulk_items_due ON bulk_items (action_id, next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX bulk_items_state ON bulk_items (action_id, state);
CREATE INDEX bulk_items_finished ON bulk_items (action_id, finished_at) WHERE finished_at IS NOT NULL;
