"""Ingestion, export bookkeeping and retention against the real database (no worker needed)."""
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.tracing import services
from apps.tracing.models import ExportStatus, RejectedEvent, TraceEvent
from apps.tracing.selectors import trace_tree

pytestmark = pytest.mark.django_db


def make_record(trace_id=None, span_id=None, parent="", name="op", offset_ms=0, duration_ms=1, **attributes):
    start = time.time_ns() + int(offset_ms * 1e6)
    return {"trace_id": trace_id or uuid.uuid4().hex, "span_id": span_id or uuid.uuid4().hex[:16],
            "parent_span_id": parent, "name": name, "start_ns": start, "end_ns": start + int(duration_ms * 1e6),
            "attributes": attributes}


def test_a_redelivered_batch_creates_no_duplicates():
    batch = [make_record(), make_record(), make_record()]
    first = services.ingest_batch(batch, "batch-1")
    again = services.ingest_batch(batch, "batch-1")
    assert first["stored"] == 3 and again["received"] == 3
    assert TraceEvent.objects.count() == 3


def test_bad_events_are_rejected_and_recorded_while_the_rest_is_stored():
    good = make_record(name="good", blob=float("nan"))
    bad = [{"trace_id": "nope", "span_id": "b" * 16, "name": "x", "start_ns": 1}, "not an object"]
    result = services.ingest_batch([good, *bad], "batch-2")
    assert (result["stored"], result["rejected"]) == (1, 2)
    stored = TraceEvent.objects.get()
    assert stored.attributes["blob"] == "nan" and "not valid JSON" in stored.issues[0]
    reasons = dict(RejectedEvent.objects.values_list("position", "reason"))
    assert "trace_id must be 32 hex digits" in reasons[1]
    assert "must be a JSON object, got str" in reasons[2]
    services.ingest_batch([good, *bad], "batch-2")  # redelivered: no duplicate rejections either
    assert RejectedEvent.objects.count() == 2


def test_a_batch_that_is_not_a_list_is_recorded_not_raised():
    result = services.ingest_batch({"oops": True}, "batch-3")
    assert result["rejected"] == 1 and result["stored"] == 0
    assert RejectedEvent.objects.get().position == -1


def test_export_status_follows_the_collector_setting(settings):
    settings.TRACING_OTLP_ENDPOINT = ""
    services.ingest_batch([make_record(name="a")], "b1")
    settings.TRACING_OTLP_ENDPOINT = "http://127.0.0.1:9/v1/traces"
    services.ingest_batch([make_record(name="b")], "b2")
    assert dict(TraceEvent.objects.values_list("name", "export_status")) == {
        "a": ExportStatus.SKIPPED, "b": ExportStatus.PENDING}


def test_export_to_an_unreachable_collector_keeps_events_pending_with_the_error(settings):
    settings.TRACING_OTLP_ENDPOINT = "http://127.0.0.1:9/v1/traces"  # discard port: refused
    services.ingest_batch([make_record(), make_record()], "b")
    result = services.export_pending(budget=5)
    assert result["exported"] == 0 and result["pending"] == 2 and "unreachable" in result["error"]
    for event in TraceEvent.objects.all():
        assert event.export_status == ExportStatus.PENDING and event.export_attempts == 1
        assert "unreachable" in event.export_error and event.lease_until is None
    services._breaker.update(failures=0, open_until=0.0)


def test_retention_deletes_only_old_events_in_bounded_batches():
    services.ingest_batch([make_record() for _ in range(7)], "old")
    services.ingest_batch([make_record(name="recent")], "new")
    TraceEvent.objects.exclude(name="recent").update(received_at=timezone.now() - timedelta(days=30))
    result = services.purge_old_events(max_age_days=14, batch=2)
    assert result["events"] == 7
    assert list(TraceEvent.objects.values_list("name", flat=True)) == ["recent"]


def test_trace_tree_links_children_to_parents_with_offsets():
    trace_id = uuid.uuid4().hex
    root = make_record(trace_id, "1" * 16, name="root", duration_ms=10)
    child = make_record(trace_id, "2" * 16, parent="1" * 16, name="child", offset_ms=2, duration_ms=3)
    orphan = make_record(trace_id, "3" * 16, parent="9" * 16, name="orphan", offset_ms=1)
    services.ingest_batch([child, root, orphan], "t")
    tree = trace_tree(trace_id)
    assert [n.event.name for n in tree.roots] == ["root", "orphan"]
    assert [c.event.name for c in tree.roots[0].children] == ["child"]
    child_node = tree.roots[0].children[0]
    assert child_node.depth == 1 and 1.5 < child_node.offset_ms < 2.5 and 20 < child_node.width_pct < 40


def test_duplicates_in_a_batch_and_across_batches_are_stored_once():
    first, second = make_record(name="first"), make_record(name="second")
    services.ingest_batch([first, first, second], "dup-1")
    services.ingest_batch([second, make_record(name="third")], "dup-2")
    assert sorted(TraceEvent.objects.values_list("name", flat=True)) == ["first", "second", "third"]


# Values normalisation never produces, each refused by both databases: a NULL name (NOT NULL, met by the
# INSERT) and a NaN inside JSON (refused by PostgreSQL's jsonb while COPY reads it, by SQLite's JSON check).
POISONS = {"null name": ("name", None), "NaN in JSON": ("attributes", {"x": float("nan")})}


@pytest.mark.parametrize("poison", POISONS)
def test_an_event_the_database_refuses_is_rejected_and_the_rest_of_its_batch_stored(monkeypatch, poison):
    """The whole-batch write (COPY on PostgreSQL, one executemany on SQLite) fails on one row; each row is
    then stored alone and the refused one recorded."""
    normalise = services.normalise
    field, value = POISONS[poison]

    def poisoned(record, now_ns, *args):
        fields = normalise(record, now_ns, *args)
        if fields["name"] == "poison":
            fields[field] = value
        return fields

    monkeypatch.setattr(services, "normalise", poisoned)
    result = services.ingest_batch([make_record(name="a"), make_record(name="poison"), make_record(name="b")], "p")
    assert (result["stored"], result["rejected"]) == (2, 1)
    assert sorted(TraceEvent.objects.values_list("name", flat=True)) == ["a", "b"]
    assert "database refused the event" in RejectedEvent.objects.get().reason
    services.ingest_batch([make_record(name="after")], "p2")  # the next batch is not affected
    assert TraceEvent.objects.filter(name="after").count() == 1


def test_the_limits_are_read_once_per_batch_and_a_changed_setting_applies_to_the_next_batch(settings, monkeypatch):
    from apps.tracing import conf

    reads = []
    real_get = conf.get
    monkeypatch.setattr(conf, "get", lambda name: reads.append(name) or real_get(name))
    services.ingest_batch([make_record(name="a", text="x" * 50) for _ in range(40)], "limits-1")
    assert len(reads) <= 10  # not per event (40) or per attribute: the batch reads each setting once
    settings.TRACING_MAX_ATTRIBUTE_LENGTH = 10
    services.ingest_batch([make_record(name="b", text="x" * 50)], "limits-2")
    assert TraceEvent.objects.filter(name="a").first().attributes["text"] == "x" * 50
    stored = TraceEvent.objects.get(name="b")
    assert stored.attributes["text"] == "x" * 10 and "truncated from 50 to 10" in stored.issues[0]


def test_clean_attributes_are_serialised_once_and_a_replaced_object_is_serialised_again(monkeypatch):
    import json

    from apps.tracing import records

    encoded, dumped = [], []
    real_encode, real_dumps = records._compact_json, json.dumps
    monkeypatch.setattr(records, "_compact_json", lambda value: encoded.append(value) or real_encode(value))
    monkeypatch.setattr(json, "dumps", lambda value, *a, **k: dumped.append(value) or real_dumps(value, *a, **k))
    services.ingest_batch([make_record(name="clean", n=i, who="user:1") for i in range(5)], "once")
    assert len(encoded) == 5 and not [value for value in dumped if isinstance(value, dict)]
    assert sorted(TraceEvent.objects.values_list("attributes__n", flat=True)) == [0, 1, 2, 3, 4]

    normalise = services.normalise

    def replaced(record, now_ns, *args):  # the text normalise made belongs to the object it made it for
        fields = normalise(record, now_ns, *args)
        fields["attributes"] = {"replaced": True}
        return fields

    monkeypatch.setattr(services, "normalise", replaced)
    services.ingest_batch([make_record(name="replaced", n=9)], "replaced")
    assert TraceEvent.objects.get(name="replaced").attributes == {"replaced": True}


def test_postgresql_copies_a_batch_straight_into_the_table_and_takes_the_staging_way_only_for_duplicates():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("COPY is the PostgreSQL path")

    def stage_exists():
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('pg_temp.tracing_ingest_stage') IS NOT NULL")
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS pg_temp.tracing_ingest_stage")
    first = [make_record(name="fresh") for _ in range(3)]
    assert services.ingest_batch(first, "fresh")["stored"] == 3
    assert not stage_exists()  # no duplicate: COPY went straight into the table
    again = services.ingest_batch([*first, make_record(name="new")], "dup")  # a redelivery plus one new event
    assert stage_exists() and again["rejected"] == 0
    assert sorted(TraceEvent.objects.values_list("name", flat=True)) == ["fresh"] * 3 + ["new"]


def test_a_batch_sent_as_json_text_is_decoded_and_stored_and_text_that_is_not_json_is_rejected_whole():
    import json

    batch = [make_record(name="from-text", n=1), make_record(name="from-text", n=2)]
    assert services.ingest_batch(json.dumps(batch), "text")["stored"] == 2
    assert TraceEvent.objects.filter(name="from-text").count() == 2
    for bad in ('[{"trace_id": ', "[" * 100_000):  # truncated; nested past the decoder's recursion limit
        result = services.ingest_batch(bad, f"bad-{len(bad)}")
        assert (result["stored"], result["rejected"], result["received"]) == (0, 1, 0)
    reasons = list(RejectedEvent.objects.order_by("id").values_list("position", "reason"))
    assert [position for position, _ in reasons] == [-1, -1]
    assert all("its text is not JSON" in reason for _, reason in reasons)


def test_the_garbage_collector_is_paused_only_while_a_batch_is_normalised(monkeypatch):
    import gc

    seen = []
    normalise = services.normalise

    def watching(record, now_ns, *args):
        seen.append(gc.isenabled())
        return normalise(record, now_ns, *args)

    monkeypatch.setattr(services, "normalise", watching)
    assert gc.isenabled()
    services.ingest_batch([make_record(), make_record()], "gc-1")
    assert seen == [False, False] and gc.isenabled()
    gc.disable()  # whoever disabled it keeps it disabled
    try:
        services.ingest_batch([make_record()], "gc-2")
        assert not gc.isenabled()
    finally:
        gc.enable()
    monkeypatch.setattr(services, "normalise", lambda *args: 1 / 0)  # an unexpected error: enabled again
    with pytest.raises(ZeroDivisionError):
        services.ingest_batch([make_record()], "gc-3")
    assert gc.isenabled()
