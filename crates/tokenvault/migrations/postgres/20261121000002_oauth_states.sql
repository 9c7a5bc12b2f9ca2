-- One-time OAuth `state` records (when no Redis is configured). Taken with
-- DELETE … RETURNING; `expires_at` is Unix milliseconds (UTC).
CREATE TABLE oauth_states (
    state       TEXT    PRIMARY KEY,
    record      JSONB   NOT NULL,
    expires_at  BIGINT  NOT NULL
);

CREATE INDEX oauth_states_expires ON oauth_states (expires_at);
