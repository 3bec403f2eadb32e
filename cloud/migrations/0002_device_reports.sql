-- What devices report: the release each runs, each service's state and
-- memory, and their log lines (a bounded number per device).

ALTER TABLE devices ADD COLUMN current_release TEXT;

CREATE TABLE device_services (
    uuid TEXT NOT NULL REFERENCES devices (uuid) ON DELETE CASCADE,
    service TEXT NOT NULL,
    state TEXT NOT NULL,
    memory BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (uuid, service)
);

-- `received_ms` and `idx` (the line's place in its batch) order lines as
-- they arrived; `time_ms` is the device's own clock, shown but not trusted
-- for order.
CREATE TABLE device_logs (
    id TEXT PRIMARY KEY,
    uuid TEXT NOT NULL REFERENCES devices (uuid) ON DELETE CASCADE,
    received_ms BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    time_ms BIGINT NOT NULL,
    service TEXT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);

CREATE INDEX device_logs_by_arrival ON device_logs (uuid, received_ms, idx);
