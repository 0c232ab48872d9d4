"""The registry's database layer: one small interface over SQLite (a file in the data dir, one
process) and PostgreSQL (one database that several registry replicas share).

Stores write portable SQL with ``?`` placeholders (translated once for PostgreSQL), ``ON
CONFLICT`` upserts and ``RETURNING``; JSON stays TEXT. The few dialect differences are in
``Database.dialect`` tokens used by the migrations (``registry.db.migrate``).
"""

from registry.db.core import Database, Result, Row, open_database
from registry.db.migrate import Migration, apply_migrations

__all__ = ["Database", "Migration", "Result", "Row", "apply_migrations", "open_database"]
