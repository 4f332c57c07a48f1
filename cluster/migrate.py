"""Versioned SQL migrations, applied at start.

Files live in `cluster/migrations/<database>/NNNN_name.sql` and are applied in order, each in its own
transaction, recorded in `schema_migrations`. A transaction-level advisory lock makes two processes
migrating at once take turns; a released file is never edited (its checksum is verified).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("paygate.migrate")

MIGRATIONS_ROOT = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x7061_7967  # "payg": one advisory lock id for migrations, per database


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations(database: str) -> list[Migration]:
    folder = MIGRATIONS_ROOT / database
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        if not number.isdigit():
            raise MigrationError(f"migration file {path.name} does not start with a version number")
        migrations.append(Migration(int(number), name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {folder}")
    return migrations


async def apply_migrations(dsn: str, database: str) -> list[int]:
    """Apply the pending migrations of `database` ('ledger' or 'vault'); return the versions applied."""
    conn = await asyncpg.connect(dsn)
    try:
        return await _apply(conn, load_migrations(database))
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[int]:
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        done = {r["version"]: r["checksum"] for r in rows}
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} was edited after it was applied"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum,
            )
            log.info("applied migration %s_%s", migration.version, migration.name)
            applied.append(migration.version)
    return applied
