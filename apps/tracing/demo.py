"""A small, realistic trace as records, for `manage.py demo` (registered in apps.py) and the benchmark."""
from __future__ import annotations

import os
import time
import uuid

from apps.tracing.tasks import ingest, probe


def demo_batch(i: int) -> tuple[list[dict], str]:
    trace_id = uuid.uuid4().hex
    root = os.urandom(8).hex()
    now = time.time_ns()

    def record(name, span_id, parent, offset_ms, duration_ms, kind="operation", **attributes):
        start = now + int(offset_ms * 1e6)
        return {"trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "name": name, "kind": kind,
                "span_kind": "internal", "service": "demo", "scope": "apps.tracing.demo", "start_ns": start,
                "end_ns": start + int(duration_ms * 1e6), "status": "ok", "attributes": attributes}

    records = [
        record("demo.import", root, "", 0, 40, sequence=i),
        record("demo.parse", os.urandom(8).hex(), root, 2, 15, rows=1000),
        record("demo.profile", os.urandom(8).hex(), root, 18, 20, columns=12),
        record("dataset.update", os.urandom(8).hex(), root, 39, 0, kind="audit",
               **{"audit.actor": "user:demo", "audit.action": "dataset.update", "audit.target": f"dataset:{i}"}),
    ]
    return records, uuid.uuid4().hex


def enqueue_demo_batch(i: int) -> str:
    """Demo work: one ingestion batch of a small trace (a root operation, two children, an audit event)."""
    records, batch_id = demo_batch(i)
    return ingest.apply_async(args=(records, batch_id), argsrepr=f"[<{len(records)} trace events>]").id


def enqueue_probe(i: int) -> str:
    return probe.delay().id
