"""Writes: ingestion of batches, export to the collector, retention."""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import operator
import time
import uuid
from datetime import timedelta

from django.db import DataError, IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.tracing import conf, otlp
from apps.tracing.models import ExportStatus, RejectedEvent, TraceEvent
from apps.tracing.records import ATTRIBUTES_JSON, InvalidEvent, normalise, read_limits

logger = logging.getLogger(__name__)


def _excerpt(value) -> str:
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):  # NaN is fine for json.dumps; this is for exotic inputs
        text = repr(value)
    return text[:2000].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _reject(batch_id: str, position: int, reason: str, payload, now) -> RejectedEvent:
    logger.warning("tracing: rejected event %s[%d]: %s", batch_id, position, reason)
    return RejectedEvent(batch_id=batch_id[:64], position=position, reason=reason, payload=_excerpt(payload),
                         received_at=now)


def ingest_batch(records, batch_id: str) -> dict:
    """Store a batch idempotently: (trace_id, span_id) is unique and duplicates are ignored.

    ``records``: a list of event records, or the same as JSON text (what the recording buffer publishes).

    Bad events are normalised (noted in their ``issues``) or rejected (a RejectedEvent row says why);
    neither stops the rest of the batch. Returns counts for the task result.
    """
    now = timezone.now()
    now_ns = time.time_ns()
    batch_id = str(batch_id or "")[:64] or uuid.uuid4().hex
    rejected: list[RejectedEvent] = []
    export_status = ExportStatus.PENDING if conf.get("TRACING_OTLP_ENDPOINT") else ExportStatus.SKIPPED
    with _collector_paused():  # decoding and normalising: CPU only, nothing in it waits on I/O
        records, rows = _normalised(records, batch_id, now, now_ns, export_status, rejected)
    stored = _store(rows, rejected, batch_id, now)
    if rejected:
        RejectedEvent.objects.bulk_create(rejected, ignore_conflicts=True)
    return {"batch_id": batch_id, "received": len(records), "stored": stored, "rejected": len(rejected),
            "export": export_status.value}


@contextlib.contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while a batch is decoded and normalised, and back as it was after.

    The batch's objects (~25 per event, none in a cycle) made the collector run a generation-0 pass every 700
    allocations and promote them all, and grew the older generations until full passes over the worker's
    whole heap: the io worker spent 1.6 s in the collector while ingesting 150,000 events (docs/tracing.md).
    The window holds no I/O, so under eventlet no other green thread runs inside it; under the threads pool
    another thread may run in it without collections for those milliseconds. Nested or concurrent windows
    leave the collector enabled once the window that disabled it ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _normalised(records, batch_id: str, now, now_ns: int, export_status, rejected: list) -> tuple[list, list[dict]]:
    """(the decoded records, the rows to store); what cannot be stored is appended to ``rejected``."""
    if isinstance(records, (str, bytes)):
        # The buffer publishes a batch as one JSON text (apps/tracing/otel.py, publish_batch): decoded here,
        # once, by the C decoder. A list in the message itself was decoded twice by the worker (once by the
        # consumer, once before the task ran), each time with kombu's Python object_hook on every event and
        # attributes object (docs/tracing.md).
        try:
            records = json.loads(records)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; absurd nesting
            rejected.append(_reject(batch_id, -1, f"a batch must be a JSON list of events; its text is not JSON: "
                                                  f"{exc!s:.200}", records, now))
            records = []
    if not isinstance(records, list):
        rejected.append(_reject(batch_id, -1, f"a batch must be a JSON list of events, got {type(records).__name__}",
                                records, now))
        return [], []
    rows: list[dict] = []
    limits = read_limits()  # once per batch: Django's settings per event and attribute cost a third of normalise
    for position, record in enumerate(records):
        try:
            fields = normalise(record, now_ns, limits)
        except InvalidEvent as exc:
            rejected.append(_reject(batch_id, position, str(exc), record, now))
            continue
        fields["received_at"] = now
        fields["export_status"] = export_status.value
        rows.append(fields)
    return records, rows


_INSERT_FIELDS = [f for f in TraceEvent._meta.concrete_fields if not f.primary_key]
_COLUMN_DEFAULTS = {"export_attempts": 0, "export_error": "", "exported_at": None, "lease_until": None,
                    "lease_token": ""}


# PostgreSQL: rows are COPYed into this session's staging table, then moved with INSERT … SELECT … ON
# CONFLICT DO NOTHING (COPY itself cannot skip duplicates).
_STAGE = "tracing_ingest_stage"
UNIQUE_VIOLATION = "23505"  # PostgreSQL's SQLSTATE


def _insert(rows: list[dict]) -> None:
    """Store normalised events, skipping a (trace_id, span_id) already stored. Runs inside the caller's
    transaction (``_store``).

    Same effect as bulk_create(ignore_conflicts=True) on the normalised dicts, without model instances and
    the ORM compiling SQL per row, which cost ~170 µs per event here (docs/tracing.md, benchmark). On
    PostgreSQL through COPY: ``ingest_batch`` called directly stored 11-12k events/s with one executemany,
    22-26k with COPY, and its Python CPU per event fell from 42 to 27-32 µs (docs/tracing.md); SQLite: one
    INSERT … ON CONFLICT DO NOTHING executemany.
    """
    if not rows:
        return
    connection = transaction.get_connection()
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in _INSERT_FIELDS)
    table, unique = quote(TraceEvent._meta.db_table), f"{quote('trace_id')}, {quote('span_id')}"
    names = [f.attname for f in _INSERT_FIELDS]
    postgres = connection.vendor == "postgresql"
    adapt_datetime = (lambda value: value) if postgres else connection.ops.adapt_datetimefield_value
    received = adapt_datetime(rows[0]["received_at"])
    row_values = operator.itemgetter(*names)
    dumps = json.dumps
    params = []
    for row in rows:
        # JSON columns as text: SQLite stores it as is, PostgreSQL reads it into jsonb. The attributes' text
        # comes from normalise when it produced it for this very object (one serialisation per event);
        # events and issues are nearly always empty.
        values = {**_COLUMN_DEFAULTS, **row}
        values["received_at"] = received
        values["start_time"] = adapt_datetime(values["start_time"])
        attributes = values["attributes"]
        known = row.get(ATTRIBUTES_JSON)
        values["attributes"] = known[1] if known is not None and known[0] is attributes and known[1] is not None \
            else dumps(attributes)
        values["events"] = "[]" if values["events"] == [] else dumps(values["events"])
        values["issues"] = "[]" if values["issues"] == [] else dumps(values["issues"])
        params.append(row_values(values))
    with connection.cursor() as cursor:
        if not postgres:
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(names))}) "
                               f"ON CONFLICT ({unique}) DO NOTHING", params)
            return
        # First straight into the table, in a savepoint: nearly every batch holds no span already stored, and
        # this skips the staging table's write, read and TRUNCATE. A duplicate (a redelivered batch, or one
        # span twice in a batch) makes COPY fail with a unique violation: the savepoint is rolled back and
        # the batch goes the staging way below, which skips duplicates. Any other error propagates.
        # psycopg 3's COPY, past Django's cursor: its errors are turned into Django's here, as execute's are
        # (a DataError must reach _store's fallback).
        try:
            with transaction.atomic(), connection.wrap_database_errors, \
                    cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for values in params:
                    copy.write_row(values)
            return
        except IntegrityError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(_STAGE)} AS SELECT {columns} FROM {table} "
                       "WITH NO DATA")
        with connection.wrap_database_errors, cursor.cursor.copy(f"COPY {quote(_STAGE)} ({columns}) FROM STDIN") as copy:
            for values in params:
                copy.write_row(values)
        cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {quote(_STAGE)} "
                       f"ON CONFLICT ({unique}) DO NOTHING")
        # Emptied in the same transaction: a failure above rolls the staged rows back with it, and TRUNCATE
        # leaves no dead rows behind in a table autovacuum never visits (temporary tables).
        cursor.execute(f"TRUNCATE {quote(_STAGE)}")


def _store(rows: list[dict], rejected: list, batch_id: str, now) -> int:
    try:
        with transaction.atomic():
            _insert(rows)
        return len(rows)
    except (IntegrityError, DataError) as exc:  # bad data; OperationalError (locked, down) propagates: retried
        if not rows:
            raise
        logger.warning("tracing: batch %s failed as a whole (%s); storing its events one by one", batch_id, exc)
    # One event the database refuses must not cost the others: store each alone, reject the failures.
    stored = 0
    for position, row in enumerate(rows):
        try:
            with transaction.atomic():
                _insert([row])
            stored += 1
        except (IntegrityError, DataError) as exc:
            rejected.append(_reject(batch_id, 100_000 + position, f"database refused the event: {exc}",
                                    {k: row[k] for k in ("trace_id", "span_id", "name")}, now))
    return stored


# --- export ----------------------------------------------------------------------------------------

_breaker = {"open_until": 0.0, "failures": 0}  # per process: after a failure, triggered exports back off


def collector_backoff_remaining() -> float:
    return max(0.0, _breaker["open_until"] - time.monotonic())


def _claim(batch: int, lease_seconds: float) -> tuple[str, list[TraceEvent]]:
    """Lease up to ``batch`` pending rows to this exporter (one UPDATE; safe with concurrent exporters)."""
    now = timezone.now()
    claimable = Q(export_status=ExportStatus.PENDING) & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    ids = list(TraceEvent.objects.filter(claimable).order_by("id").values_list("id", flat=True)[:batch])
    if not ids:
        return "", []
    token = uuid.uuid4().hex
    TraceEvent.objects.filter(claimable, id__in=ids).update(
        lease_until=now + timedelta(seconds=lease_seconds), lease_token=token)
    return token, list(TraceEvent.objects.filter(lease_token=token, export_status=ExportStatus.PENDING).order_by("id"))


def export_pending(endpoint: str | None = None, budget: float | None = None) -> dict:
    """Export pending rows in batches until none is left, the collector fails, or the time budget is spent."""
    endpoint = endpoint if endpoint is not None else conf.get("TRACING_OTLP_ENDPOINT")
    if not endpoint:
        return {"exported": 0, "rejected": 0, "error": "no collector configured (TRACING_OTLP_ENDPOINT)"}
    timeout = conf.get("TRACING_OTLP_TIMEOUT")
    batch = conf.get("TRACING_EXPORT_BATCH")
    deadline = time.monotonic() + (budget if budget is not None else conf.get("TRACING_EXPORT_BUDGET"))
    exported = rejected = 0
    error = ""
    while time.monotonic() < deadline:
        token, events = _claim(batch, lease_seconds=timeout * 4 + 10)
        if not events:
            break
        ids = [event.id for event in events]
        try:
            otlp.export(events, endpoint, timeout)
        except otlp.ExportRejected as exc:
            TraceEvent.objects.filter(id__in=ids).update(
                export_status=ExportStatus.REJECTED, export_error=str(exc)[:4000], lease_until=None, lease_token="")
            rejected += len(ids)
            continue
        except otlp.ExportFailed as exc:
            error = str(exc)
            TraceEvent.objects.filter(id__in=ids).update(export_error=error[:4000], lease_until=None, lease_token="")
            _bump_attempts(ids)
            _breaker["failures"] += 1
            backoff = min(conf.get("TRACING_EXPORT_BACKOFF_MAX"), 2 ** min(_breaker["failures"], 10))
            _breaker["open_until"] = time.monotonic() + backoff
            logger.warning("tracing: export failed (%s); %d events stay pending, next try in ≥%ds",
                           error, len(ids), backoff)
            break
        TraceEvent.objects.filter(id__in=ids).update(
            export_status=ExportStatus.EXPORTED, exported_at=timezone.now(), export_error="",
            lease_until=None, lease_token="")
        _bump_attempts(ids)
        exported += len(ids)
        _breaker.update(failures=0, open_until=0.0)
    pending = TraceEvent.objects.filter(export_status=ExportStatus.PENDING).count()
    return {"exported": exported, "rejected": rejected, "pending": pending, "error": error}


def _bump_attempts(ids: list[int]) -> None:
    from django.db.models import F

    TraceEvent.objects.filter(id__in=ids).update(export_attempts=F("export_attempts") + 1)


# --- retention -------------------------------------------------------------------------------------

def purge_old_events(max_age_days: float | None = None, batch: int | None = None, max_batches: int = 200) -> dict:
    """Delete events (and rejections) stored more than ``max_age_days`` ago, ``batch`` rows per statement."""
    max_age_days = conf.get("TRACING_RETENTION_DAYS") if max_age_days is None else max_age_days
    batch = batch or conf.get("TRACING_PURGE_BATCH")
    cutoff = timezone.now() - timedelta(days=max_age_days)
    deleted = {"events": 0, "rejected": 0}
    for model, key in ((TraceEvent, "events"), (RejectedEvent, "rejected")):
        for _ in range(max_batches):
            ids = list(model.objects.filter(received_at__lt=cutoff).order_by("id").values_list("id", flat=True)[:batch])
            if not ids:
                break
            with transaction.atomic():
                deleted[key] += model.objects.filter(id__in=ids).delete()[0]
    return {"cutoff": cutoff.isoformat(), **deleted}
