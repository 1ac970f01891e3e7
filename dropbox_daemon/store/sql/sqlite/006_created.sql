-- Schema version 6: the share's job list in shared-folder mode merges each daemon's jobs by
-- creation time (a daemon's seq counts only its own), newest first, page by page.
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs(state, created_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_inbox_created ON jobs(inbox, created_at, job_id);
