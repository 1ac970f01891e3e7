-- Farm mode, schema version 1 (release 0.1.0): one PostgreSQL database for every daemon of a farm.
-- Applied by `dropbox-daemon db migrate` under an advisory lock; every statement is idempotent.
-- A released migration is never edited: later changes are new pg_NNN_*.sql files.
-- Times of jobs are epoch seconds (as in SQLite); leases use the database's own clock.

CREATE SEQUENCE IF NOT EXISTS job_seq;

CREATE TABLE IF NOT EXISTS jobs (
    job_id text PRIMARY KEY,  -- unique across the farm: the idempotency key
    seq bigint NOT NULL,
    trace_id text NOT NULL,
    inbox text NOT NULL,
    state text NOT NULL,
    stage text,
    progress double precision NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    engine text,
    device text,
    priority integer NOT NULL DEFAULT 0,
    host text,
    instance text,            -- the instance that holds (renders) it
    generation integer NOT NULL DEFAULT 0,  -- bumped at every dispatch and takeover: the fence
    config_hash text,
    claim_dir text,
    manifest_name text,
    duplicate_of text,
    callback_url text,
    cancel_requested integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    queued_at double precision,
    started_at double precision,
    finished_at double precision,
    updated_at double precision NOT NULL,
    timings text NOT NULL DEFAULT '{}',
    inputs text NOT NULL DEFAULT '[]',
    output text,
    error text,
    meta text NOT NULL DEFAULT '{}',
    manifest text
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (priority DESC, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_inbox_seq ON jobs (inbox, seq);
CREATE INDEX IF NOT EXISTS jobs_instance_seq ON jobs (instance, seq);
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs (seq);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at);

CREATE TABLE IF NOT EXISTS events (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    at double precision NOT NULL,
    from_state text,
    to_state text NOT NULL,
    detail text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, id);

CREATE TABLE IF NOT EXISTS deliveries (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    trace_id text,
    url text NOT NULL,
    body text NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_at double precision NOT NULL,
    created_at double precision NOT NULL,
    finished_at double precision,
    last_status integer,
    last_error text
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id);

-- One row per daemon: its lease (renewed on the database's clock) and what the farm view shows.
CREATE TABLE IF NOT EXISTS instances (
    instance text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    boot_id text NOT NULL DEFAULT '',
    state_dir text NOT NULL DEFAULT '',
    started_at double precision NOT NULL,
    lease_at timestamptz NOT NULL DEFAULT now(),
    beat bigint NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'running',
    version text,
    device text,
    worker text,
    current_job text
);

CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL);
INSERT INTO schema_version (version) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM schema_version);
