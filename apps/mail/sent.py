"""SENT outcomes of many deliveries written in one statement: a group commit per worker process.

At -c 500 each delivery took a pooled connection for its own SENT UPDATE, so hundreds of green threads
queued for 30 connections between the SMTP server's 250 and the commit (docs/mail.md, the window). Here a
delivery hands its outcome to the process's writer and waits for it; the writer takes every outcome that
is waiting and writes them in one UPDATE ... FROM (VALUES ...), each row guarded by its claim exactly as
``services._record`` guards one (status SENDING and claimed_by the delivery's own label). While it writes,
the next outcomes gather, so the batch grows with the load and the window stays one statement plus the wait
for the writer. The writer is a thread (a green thread under eventlet) started on first use; if its write
fails, every delivery in that round gets the error and records its outcome on its own (``_record``).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from apps.mail.models import Message, Status

logger = logging.getLogger(__name__)

ROWS_PER_STATEMENT = 500
# The writer keeps its database connection while outcomes keep coming: taking one from the pool for every
# round queued it behind hundreds of claims (windows of seconds at p99, bench/mail_throughput.py -c 500).
IDLE_SECONDS = 1.0


@dataclass
class Sent:
    message_id: int
    claimed_by: str
    smtp_code: int
    smtp_reply: str
    accepted_at: datetime


@dataclass
class _Waiting:
    sent: Sent
    done: threading.Event = field(default_factory=threading.Event)
    recorded: bool | None = None
    error: BaseException | None = None


class GroupWriter:
    def __init__(self):
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._waiting: list[_Waiting] = []
        self._thread: threading.Thread | None = None

    def record(self, sent: Sent) -> bool:
        """Write SENT for this claim; True if the claim still stood (False: another delivery took it)."""
        entry = _Waiting(sent)
        with self._lock:
            self._waiting.append(entry)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="mail-sent-writer", daemon=True)
                self._thread.start()
            self._ready.notify()
        entry.done.wait()
        if entry.error is not None:
            raise entry.error
        return bool(entry.recorded)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    if not self._ready.wait(timeout=IDLE_SECONDS):
                        _give_connection_back()  # idle: the pooled connection goes back (kept while busy)
                round_, self._waiting = self._waiting, []
            try:
                written = write([entry.sent for entry in round_])
                for entry in round_:
                    entry.recorded = entry.sent.message_id in written
            except BaseException as exc:  # each delivery records on its own instead; the writer lives on
                logger.warning("writing %d SENT outcomes in one statement failed", len(round_), exc_info=True)
                _give_connection_back()
                for entry in round_:
                    entry.error = exc
            finally:
                for entry in round_:
                    entry.done.set()


def write(rows: list[Sent]) -> set[int]:
    """SENT for each row whose claim still stands, in one transaction; the ids written."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    written = set()
    with transaction.atomic():
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start:start + ROWS_PER_STATEMENT]
            with connection.cursor() as cursor:
                cursor.execute(_sql(len(chunk)), [
                    *(value for row in chunk for value in (
                        row.message_id, row.claimed_by, row.smtp_code, row.smtp_reply,
                        connection.ops.adapt_datetimefield_value(row.accepted_at))),
                    Status.SENT.value, now, now, Status.SENDING.value])
                written.update(pk for (pk,) in cursor.fetchall())
    return written


def _sql(n: int) -> str:
    q = connection.ops.quote_name
    table = q(Message._meta.db_table)
    col = {name: q(Message._meta.get_field(name).column) for name in (
        "id", "status", "claimed_by", "smtp_code", "smtp_reply", "smtp_accepted_at", "sent_at", "updated_at")}
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * n)
    # A CTE with named columns: PostgreSQL and SQLite (3.35+) both take it with UPDATE ... FROM ... RETURNING.
    return (f"WITH v(id, claimed_by, code, reply, accepted_at) AS (VALUES {values}) "
            f"UPDATE {table} SET {col['status']} = %s, {col['smtp_code']} = v.code, {col['smtp_reply']} = v.reply, "
            f"{col['smtp_accepted_at']} = v.accepted_at, {col['sent_at']} = %s, {col['updated_at']} = %s "
            f"FROM v WHERE {table}.{col['id']} = v.id AND {table}.{col['status']} = %s "
            f"AND {table}.{col['claimed_by']} = v.claimed_by RETURNING {table}.{col['id']}")


def _give_connection_back() -> None:
    """Hand the pooled connection back (or close it: SQLite, or after an error, so the next round reconnects)."""
    try:
        connection.close()
    except Exception:  # a broken connection is being dropped anyway
        logger.debug("closing the SENT writer's connection failed", exc_info=True)


writer = GroupWriter()
