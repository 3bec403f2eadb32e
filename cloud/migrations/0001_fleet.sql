-- The fleet API's tables. Written in the SQL that SQLite and PostgreSQL
-- share: TEXT and BIGINT columns only (times are Unix seconds), keys made by
-- the server rather than by the database, no AUTOINCREMENT or SERIAL.

-- API tokens. Only the sha256 of a token is kept; a revoked token keeps its
-- row, so that starting again with the same admin.token does not bring it
-- back.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- `pinned_release` is a release id, or NULL to track the fleet's latest.
CREATE TABLE fleets (
    name TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    pinned_release TEXT
);

CREATE TABLE provisioning_keys (
    id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL REFERENCES fleets (name) ON DELETE CASCADE,
    hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- `seq` orders a fleet's releases: the latest is the highest.
-- `services` is the release's services as JSON, as the API validated them.
CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    fleet TEXT NOT NULL REFERENCES fleets (name) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    version TEXT NOT NULL,
    services TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (fleet, seq),
    UNIQUE (fleet, version)
);

CREATE TABLE devices (
    uuid TEXT PRIMARY KEY,
    fleet TEXT NOT NULL REFERENCES fleets (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    arch TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    pinned_release TEXT REFERENCES releases (id),
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

CREATE INDEX devices_by_fleet ON devices (fleet);

-- Environment variables. An empty `device` means the whole fleet and an
-- empty `service` every service, so that the key has no NULLs in it (NULLs
-- never collide in a UNIQUE or PRIMARY KEY).
CREATE TABLE env_vars (
    fleet TEXT NOT NULL REFERENCES fleets (name) ON DELETE CASCADE,
    device TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (fleet, device, service, name)
);
