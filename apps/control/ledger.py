"""Applying Celery task events to ledger rows: pure logic, shared by the recorder and the tests.

Events reach the recorder from different connections (the publisher's task-sent, the worker's
task-started ...), so they can arrive out of order. Rules:
* a final state reported by a worker is never replaced: the first one wins;
* a state the control plane set itself (CANCELLED of a queued task, LOST) is provisional: the next event
  that says what really happened replaces it; a revoke the control plane asked for reads CANCELLED;
* among non-final states the event with the newer timestamp wins;
* data fields (worker, queue, timings, progress) are filled whatever the order;
* after a dead-letter replay reopened a task (``reopened_at``), events of its earlier life are ignored.
"""
from __future__ import annotations

from datetime import datetime, timezone

from apps.control import redaction, states

CANCELLED_EXCEPTIONS = ("TaskCancelled",)
TIMEOUT_EXCEPTIONS = ("TimeLimitExceeded", "SoftTimeLimitExceeded")


def ts(value) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return None


def parse_eta(value) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def counter(value) -> int:
    """A counter from an event (any client can publish one): 0 when it is not a number."""
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _exception_name(exception: str) -> str:
    return (exception or "").split("(", 1)[0].strip().rsplit(".", 1)[-1]


def state_for(event: dict) -> str | None:
    """The ledger state an event moves a task to (None: the event only carries data)."""
    kind = event.get("type")
    if kind == "task-sent":
        return states.QUEUED
    if kind == "task-started":
        return states.STARTED
    if kind == "task-progress":
        return states.PROGRESS
    if kind == "task-retried":
        return states.RETRY
    if kind == "task-succeeded":
        return states.SUCCESS
    if kind == "task-failed":
        name = _exception_name(event.get("exception", ""))
        if name in CANCELLED_EXCEPTIONS:
            return states.CANCELLED
        if name in TIMEOUT_EXCEPTIONS:
            return states.TIMED_OUT
        return states.FAILURE
    if kind == "task-revoked":
        return states.REVOKED
    return None  # task-received, task-rejected: data only


def apply_event(record, event: dict) -> bool:
    """Update ``record`` (a TaskRecord, saved by the caller) from one event. True if the state changed."""
    kind = event.get("type")
    when = ts(event.get("timestamp"))
    if record.reopened_at and when and when < record.reopened_at:
        return False  # from the task's life before a dead-letter replay reopened it
    previous_retries = record.retries
    if kind in ("task-sent", "task-received"):
        if event.get("name"):
            record.name = event["name"]
        if kind == "task-sent":
            record.queue = event.get("queue") or event.get("routing_key") or record.queue
            record.sent_at = record.sent_at or when
        record.retries = max(record.retries, counter(event.get("retries")))
        record.eta = parse_eta(event.get("eta")) or record.eta
        record.parent_id = event.get("parent_id") or record.parent_id
        record.root_id = event.get("root_id") or record.root_id
        if "args" in event and not record.args and not record.kwargs:
            call_args, call_kwargs = redaction.parse_repr(event.get("args")), redaction.parse_repr(event.get("kwargs"))
            record.args, record.kwargs = redaction.redact_call(
                record.name, call_args, call_kwargs, event.get("args") or "", event.get("kwargs") or "")
            if isinstance(call_args, (list, tuple)) and isinstance(call_kwargs, dict) \
                    and redaction.json_safe(call_args, call_kwargs):
                record.call = {"args": list(call_args), "kwargs": call_kwargs}
    elif kind == "task-started":
        record.worker = event.get("hostname") or record.worker
        record.started_at = when
        record.attempts += 1
    elif kind == "task-progress":
        record.progress_step = str(event.get("step") or "")[:255]
        record.progress_message = str(event.get("message") or "")
        record.progress_current = event.get("current")
        record.progress_total = event.get("total")
    elif kind == "task-succeeded":
        record.result = str(event.get("result") or "")
        record.runtime = event.get("runtime")
        record.finished_at = when
        record.worker = event.get("hostname") or record.worker
    elif kind in ("task-failed", "task-retried"):
        record.error = str(event.get("exception") or "")
        record.traceback = str(event.get("traceback") or "")
        record.worker = event.get("hostname") or record.worker
        if kind == "task-failed":
            record.finished_at = when
    elif kind == "task-revoked":
        record.finished_at = record.finished_at or when
        detail = "expired" if event.get("expired") else ("terminated" if event.get("terminated") else "revoked")
        record.error = record.error or detail

    new_state = state_for(event)
    if new_state is None:
        return False
    if new_state == states.QUEUED and record.state in states.RUNNING \
            and counter(event.get("retries")) <= previous_retries:
        # Celery sends task-sent after the publish is confirmed, so it can be newer than task-started.
        return False
    return _move(record, new_state, when)


def _move(record, new_state: str, when: datetime | None) -> bool:
    current = record.state
    if new_state == states.REVOKED and record.cancel_requested_at:
        new_state = states.CANCELLED  # the revoke the control plane asked for
    if current in states.TERMINAL and not record.provisional:
        return False  # final states are sticky
    if record.provisional and current == states.CANCELLED and new_state == states.QUEUED:
        return False  # the task-sent of a task cancelled before the recorder saw it
    if new_state not in states.TERMINAL and not record.provisional and record.last_event_at and when \
            and when < record.last_event_at:
        return False  # an older non-final event arriving late
    record.state = new_state
    record.provisional = False
    record.last_event_at = max(filter(None, [when, record.last_event_at]), default=None)
    return current != new_state
