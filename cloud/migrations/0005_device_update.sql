-- How each device's last update went: applying, healthy, rolled back (and
-- why), or failed with nothing to go back to.

ALTER TABLE devices ADD COLUMN update_state TEXT;
ALTER TABLE devices ADD COLUMN update_release TEXT;
ALTER TABLE devices ADD COLUMN update_reason TEXT;
ALTER TABLE devices ADD COLUMN update_at BIGINT;
