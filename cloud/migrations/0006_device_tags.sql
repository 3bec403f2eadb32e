-- Tags: a user's own labels on a device (site, customer, hardware
-- revision), a value per key.

CREATE TABLE device_tags (
    uuid TEXT NOT NULL REFERENCES devices (uuid) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (uuid, tag)
);
