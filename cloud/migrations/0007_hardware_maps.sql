-- Hardware maps given from the cloud, as TOML: one for a whole fleet, and
-- one for a device (which wins over its fleet's).

ALTER TABLE fleets ADD COLUMN hardware_map TEXT;
ALTER TABLE devices ADD COLUMN hardware_map TEXT;
