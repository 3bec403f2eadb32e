-- A cursor for following logs: each device numbers its lines 1, 2, 3, … in
-- the order they arrive (`seq`), from a counter on the device's row
-- (`log_seq`, the last number handed out). Taking numbers updates that row,
-- which PostgreSQL locks until the batch commits, so a later batch of one
-- device never becomes visible before an earlier one, and a reader that has
-- seen line N misses nothing by asking for the lines after N.

ALTER TABLE devices ADD COLUMN log_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE device_logs ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;

-- Lines kept from before: numbered in the order they arrived.
UPDATE device_logs SET seq = numbered.n
FROM (
    SELECT id, ROW_NUMBER() OVER (PARTITION BY uuid ORDER BY received_ms, idx) AS n
    FROM device_logs
) AS numbered
WHERE device_logs.id = numbered.id;

UPDATE devices SET log_seq = COALESCE(
    (SELECT MAX(seq) FROM device_logs WHERE device_logs.uuid = devices.uuid), 0);

DROP INDEX device_logs_by_arrival;
CREATE UNIQUE INDEX device_logs_by_seq ON device_logs (uuid, seq);
