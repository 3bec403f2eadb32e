-- A counter bumped by every change to anything a fleet's targets depend on
-- (releases, pins, variables), so a held request can tell with one cheap
-- read whether its target may have changed, instead of working the target
-- out again.
ALTER TABLE fleets ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
