-- Schema version 5: which daemon made each transition (as the farm's PostgreSQL schema, version 2).
ALTER TABLE events ADD COLUMN instance TEXT;
