-- Dashboard sign-ins: a browser that signed in with an API token holds a
-- random session id in a cookie; only its sha256 is stored here, beside the
-- token it was signed in with (revoking that token ends the session) and
-- the session's CSRF token, which every form it posts must carry.

CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    token_id TEXT NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);
