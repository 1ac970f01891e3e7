-- The statements both backends run, each under its name (`-- name: <name>`), loaded by
-- store/statements.py. Placeholders are `?`; the PostgreSQL connection turns them into its own.
-- A statement that one backend extends (a row lock, SKIP LOCKED) gets the suffix from its
-- backend class (Store.LOCK, Store.SKIP_LOCKED), never a second copy here.

-- jobs -----------------------------------------------------------------------------------

-- name: job
SELECT * FROM jobs WHERE job_id = ?

-- name: job_ids
SELECT job_id FROM jobs

-- name: job_exists
SELECT 1 AS one FROM jobs WHERE job_id = ?

-- name: delete_job
DELETE FROM jobs WHERE job_id = ?

-- name: queued
SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, seq ASC LIMIT ?

-- name: count_queued
SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued'

-- name: counts_by_state
SELECT state, COUNT(*) AS n FROM jobs GROUP BY state

-- name: active_by_inbox
SELECT inbox, state, COUNT(*) AS n FROM jobs
WHERE state IN ('received', 'queued', 'preparing', 'rendering', 'encoding')
GROUP BY inbox, state

-- name: cancel_requested
SELECT * FROM jobs WHERE cancel_requested = 1

-- Jobs that have not ended and are not waiting in the queue (a farm: of one instance).
-- name: held
SELECT * FROM jobs
WHERE state IN ('received', 'preparing', 'rendering', 'encoding')
ORDER BY priority DESC, seq ASC

-- name: held_by_instance
SELECT * FROM jobs
WHERE state IN ('received', 'preparing', 'rendering', 'encoding') AND instance = ?
ORDER BY priority DESC, seq ASC

-- Jobs cut off by a stop: taken in (received) or running.
-- name: interrupted
SELECT * FROM jobs WHERE state IN ('received', 'preparing', 'rendering', 'encoding') ORDER BY seq

-- name: interrupted_of_instance
SELECT * FROM jobs
WHERE state IN ('received', 'preparing', 'rendering', 'encoding') AND instance = ?
ORDER BY seq

-- events ---------------------------------------------------------------------------------

-- name: add_event
INSERT INTO events (job_id, at, from_state, to_state, detail, instance) VALUES (?, ?, ?, ?, ?, ?)

-- name: events_of_job
SELECT * FROM events WHERE job_id = ? ORDER BY id

-- name: delete_events_of_job
DELETE FROM events WHERE job_id = ?

-- callback deliveries --------------------------------------------------------------------

-- name: add_delivery
INSERT INTO deliveries (job_id, trace_id, url, body, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?)

-- name: due_deliveries
SELECT * FROM deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?

-- name: lease_delivery
UPDATE deliveries SET next_at = ? WHERE id = ?

-- name: next_delivery_at
SELECT MIN(next_at) AS t FROM deliveries WHERE state = 'pending'

-- name: retry_delivery
UPDATE deliveries SET attempts = ?, next_at = ?, last_status = ?, last_error = ? WHERE id = ?

-- name: finish_delivery
UPDATE deliveries
SET state = ?, finished_at = ?, last_status = ?, last_error = ?, attempts = COALESCE(?, attempts)
WHERE id = ?

-- name: deliveries_of_job
SELECT * FROM deliveries WHERE job_id = ? ORDER BY id

-- name: delete_deliveries_of_job
DELETE FROM deliveries WHERE job_id = ?

-- retention ------------------------------------------------------------------------------

-- name: ended_before
SELECT * FROM jobs
WHERE inbox = ? AND finished_at < ?
  AND state IN ('done', 'failed', 'cancelled', 'rejected', 'duplicate')
ORDER BY finished_at

-- name: claim_dirs
SELECT claim_dir FROM jobs WHERE claim_dir IS NOT NULL
