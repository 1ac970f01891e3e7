-- SQLite, schema version 1: one database per daemon (the daemon applies it at start-up).
-- A released migration is never edited: later changes are new NNN_*.sql files beside it.
-- Times are epoch seconds; JSON columns hold text.
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    inbox TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    progress REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    engine TEXT,
    device TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    config_hash TEXT,
    claim_dir TEXT,
    manifest_name TEXT,
    duplicate_of TEXT,
    callback_url TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    queued_at REAL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    timings TEXT NOT NULL DEFAULT '{}',
    inputs TEXT NOT NULL DEFAULT '[]',
    output TEXT,
    error TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    manifest TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority, seq);
CREATE INDEX IF NOT EXISTS jobs_inbox ON jobs(inbox, state);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
