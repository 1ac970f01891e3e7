-- Schema version 4: the instance that holds (renders) a job, and the generation of its claim:
-- bumped at every dispatch and takeover, so a late write of an earlier holder is refused.
ALTER TABLE jobs ADD COLUMN instance TEXT;
ALTER TABLE jobs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS jobs_instance_seq ON jobs(instance, seq);
