-- What the device page shows the user: the code to enter and where. Not
-- secret (the user reads them off a screen); the device code stays sealed.
ALTER TABLE device_sessions ADD COLUMN user_code TEXT;
ALTER TABLE device_sessions ADD COLUMN verification_uri TEXT;
ALTER TABLE device_sessions ADD COLUMN verification_uri_complete TEXT;

-- Admin console sessions: an operator signed in with an admin API key.
-- Keyed by a SHA-256 of the session cookie (a leaked table opens no
-- session); key_digest names the API key it was opened with, so revoking
-- that key ends the session. Times are Unix milliseconds (UTC).
CREATE TABLE admin_sessions (
    id_digest   TEXT    PRIMARY KEY,
    key_id      TEXT    NOT NULL,
    key_digest  TEXT    NOT NULL,
    csrf_token  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL
);
CREATE INDEX admin_sessions_expiry ON admin_sessions (expires_at);
