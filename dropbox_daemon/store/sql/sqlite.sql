-- The statements only the embedded SQLite store runs (store/sqlite.py), loaded by name.

-- name: next_seq
SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs

-- name: schema_version
PRAGMA user_version
