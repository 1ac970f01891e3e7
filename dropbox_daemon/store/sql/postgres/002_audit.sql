-- Schema version 2: which daemon made each transition (takeovers and late results read
-- as "by whom" in the events), and when and by which release each version was applied.
ALTER TABLE events ADD COLUMN IF NOT EXISTS instance text;
ALTER TABLE schema_version ADD COLUMN IF NOT EXISTS applied_at timestamptz;
ALTER TABLE schema_version ADD COLUMN IF NOT EXISTS release text;
