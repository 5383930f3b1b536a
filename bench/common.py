"""Helpers the benchmark scripts share."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def scratch_database(prefix: str) -> tuple[str, Callable[[], None]]:
    """A fresh database for one run (a new PostgreSQL database when DATABASE_URL is PostgreSQL, else an
    SQLite file under var/); returns (url, drop)."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        import psycopg

        base, _, _ = url.rpartition("/")
        name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop_postgres():
            with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        return f"{base}/{name}", drop_postgres
    path = ROOT / "var" / f"bench-{prefix}-{uuid.uuid4().hex[:8]}.sqlite3"
    path.parent.mkdir(exist_ok=True)

    def drop_sqlite():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    return f"sqlite:///{path}", drop_sqlite
