-- Each service's restarts and last exit as its device reports them, a
-- bounded history of its memory and restarts for plots, and restarts asked
-- for from the cloud (a count per service; see `TargetState::restarts`).

ALTER TABLE device_services ADD COLUMN restarts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE device_services ADD COLUMN last_exit TEXT;

CREATE TABLE service_samples (
    uuid TEXT NOT NULL REFERENCES devices (uuid) ON DELETE CASCADE,
    service TEXT NOT NULL,
    at BIGINT NOT NULL,
    memory BIGINT,
    restarts BIGINT NOT NULL
);

CREATE INDEX service_samples_by_time ON service_samples (uuid, service, at);

CREATE TABLE restart_requests (
    uuid TEXT NOT NULL REFERENCES devices (uuid) ON DELETE CASCADE,
    service TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (uuid, service)
);
