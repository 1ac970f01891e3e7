-- What the farm's schema tools, the link and doctor ask the server itself (pg_schema.py,
-- pg_link.py, pg_doctor.py), loaded by name. These run on a bare psycopg connection, so
-- their placeholders are psycopg's own (%s), not the store's `?`.

-- name: schema_exists
SELECT to_regclass('schema_version') IS NOT NULL

-- name: schema_version
SELECT MAX(version) FROM schema_version

-- Held until the migrating transaction ends: two operators migrating at once wait in turn.
-- name: schema_lock
SELECT pg_advisory_xact_lock(%s)

-- name: record_version
INSERT INTO schema_version (version, applied_at, release) VALUES (%s, now(), %s)

-- name: current_schema
SELECT current_schema()

-- name: table_right
SELECT has_table_privilege(%s, %s)

-- A sequence that is not there yet (an older schema) lacks nothing.
-- name: sequence_right
SELECT to_regclass(%s) IS NULL OR has_sequence_privilege(%s, 'USAGE')

-- The TLS protocol as the server saw it (behind a pooler: the pooler's link).
-- name: tls_version
SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl

-- Each transaction sets its own timeouts (PgBouncer in transaction mode keeps no session).
-- name: set_local_timeouts
SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true),
       set_config('idle_in_transaction_session_timeout', %s, true)

-- name: ping
SELECT 1

-- name: connection_slots
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       (SELECT count(*) FROM instances WHERE state <> 'stopped')
