-- Schema version 3: newest-first pages for the jobs API, filtered or not.
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_inbox_seq ON jobs(inbox, seq);
