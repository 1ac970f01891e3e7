-- The statements only the farm's PostgreSQL store runs (store/postgres.py), loaded by name.
-- Leases are timed by the database's clock (now()), never the hosts'.

-- name: next_seq
SELECT nextval('job_seq')

-- name: schema_version
SELECT MAX(version) AS v FROM schema_version

-- The farm's next job in one statement, skipping rows other daemons are taking this moment.
-- name: take_next
SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq ASC
LIMIT 1 FOR UPDATE SKIP LOCKED

-- Jobs held by another instance whose lease is older than ? seconds, or that stopped or
-- has no lease row at all; with the holder's state and lease age (the database's clock).
-- name: takeover_candidates
SELECT j.*, i.state AS holder_state,
       EXTRACT(EPOCH FROM now() - i.lease_at)::float8 AS holder_age
FROM jobs j LEFT JOIN instances i ON i.instance = j.instance
WHERE j.state IN ('received', 'preparing', 'rendering', 'encoding')
  AND j.instance IS NOT NULL AND j.instance <> ?
  AND (i.instance IS NULL OR i.state = 'stopped'
       OR i.lease_at < now() - make_interval(secs => ?))
ORDER BY j.priority DESC, j.seq LIMIT 50 FOR UPDATE OF j SKIP LOCKED

-- name: instance
SELECT *, EXTRACT(EPOCH FROM now() - lease_at)::float8 AS age FROM instances WHERE instance = ?

-- name: instances
SELECT *, EXTRACT(EPOCH FROM now() - lease_at)::float8 AS age,
       EXTRACT(EPOCH FROM lease_at)::float8 AS renewed_at
FROM instances ORDER BY instance
