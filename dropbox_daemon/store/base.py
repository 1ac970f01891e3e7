"""The job store's contract: one class assembled from its parts, each an idea of its own.

- job.py         the Job, its states and moves, the queue's order (pure);
- core.py        the hooks a backend supplies and reading rows as Jobs;
- machine.py     the state machine, the only writer of a job's state and of task.json;
- queries.py     lists, pages and counts;
- deliveries.py  callback deliveries;
- retention.py   rows past their keep_days;
- resume.py      interrupted jobs after a stop or a takeover;
- statements.py  the SQL of all of them, kept in sql/ and loaded by name.

A backend (sqlite.py, postgres.py) subclasses Store and supplies the connection,
transactions and the few statements whose SQL differs.
"""

from __future__ import annotations

from dropbox_daemon.store.deliveries import Deliveries
from dropbox_daemon.store.queries import Queries
from dropbox_daemon.store.resume import Resume
from dropbox_daemon.store.retention import Retention


class Store(Resume, Queries, Deliveries, Retention):
    """The contract both backends keep; the state machine is written once (machine.py)."""
