"""A single ``apply_async`` without Celery's per-message build: messages derived from a per-process template.

Profiled (docs/benchmarks.md), one ``apply_async`` spent about as long in Celery's client-side work as in
the broker round trip: option merging, routing, building the protocol-2 message (``as_task_v2``),
layered configuration lookups. For a plain call (arguments only: no options, links, producer or shadow;
not from inside a task; no default ``expires``/``countdown``; routes by task name) all of that yields the
same message every time except for the id, the root id, the arguments and their reprs. So the first plain
call of each task in a process goes through Celery, and the message it built (before publish-signal
receivers changed it) and the keyword arguments kombu's ``publish`` got become that task's template; later
plain calls copy it with their own id, root id, arguments, reprs, body and ``reply_to``, and publish it the
same way:

* on a pooled producer, with publisher confirms, the same retry policy and queue declaration;
* the size guard on every body; a broker nack raises ``QueueFull`` as on Celery's path;
* ``before_task_publish`` / ``after_task_publish`` are sent when anything listens (tracing does: its
  publish span and trace context are per call), and the ``task-sent`` event the ledger needs;
* argument checking (``task.typing``) as Celery does it.

Anything else (options, a canvas, a call from a running task, eager mode, a confirmed batch, a library that
adds headers to Celery's ``apply_async``) takes Celery's own path, and so does every call on Celery, kombu
or py-amqp versions other than the ones tests/core/test_golden_messages.py proved the derived messages
equal to Celery's on (``compat.DERIVATION_TESTED_ON``). Templates are per process (cleared in forked
children: the ``origin`` header names the process). apps/core/bulk.py derives its messages the same way.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from celery import Task, signals
from celery.utils.saferepr import saferepr
from kombu.serialization import dumps, loads
from kombu.utils.uuid import uuid

from apps.core import compat
from apps.core.amqp import active_batch, check_message_size, queue_full_error, set_recorder
from apps.core.events import SentEventBuffer

PLAIN_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

# Optional protocol-2 headers (Celery's docs/internals/protocol) that a worker reads with a default equal to
# what a plain call carries (celery.worker.request, Task.Context). Every header costs the client its encoding
# and RabbitMQ its parsing: dropping these six made a confirmed publish ~35 us faster here (benchmarks.md).
# ``group``/``parent_id`` stay even when None: the protocol lists them as always present.
_OPTIONAL_WHEN_EMPTY = ("shadow", "eta", "expires", "group_index", "stamped_headers", "stamps")


def lean_headers(headers: dict) -> dict:
    """A template's headers without the optional ones that say nothing (None, or no stamps)."""
    return {k: v for k, v in headers.items() if not (k in _OPTIONAL_WHEN_EMPTY and not v)}


@dataclass(frozen=True)
class Template:
    publish_kwargs: dict  # what kombu's Producer.publish got; "headers": the message's as Celery built it, lean
    serializer: str
    embed: dict  # the body's third part (callbacks, errbacks, chain, chord)
    own_root: bool  # the message was its own root (not sent from inside a running task)
    signal_properties: dict  # the properties before_task_publish receivers get (Celery's message properties)
    sent_event: dict | None  # task-sent fields (queue, exchange, routing key...), None when not sent
    ignore_result: bool
    declared: frozenset  # kombu's cache keys of the queues publish declares, once per connection
    reprs: tuple  # Celery's argsrepr_maxsize, kwargsrepr_maxsize and task_repr_maxlevels
    properties: dict | None  # the AMQP properties kombu would send; None: this message needs kombu's publish
    timeouts: dict  # publish and confirm timeouts Celery passes, when set


# What Celery passes kombu's publish for a plain call; anything else (compression, expiration...) keeps the
# template on kombu's own publish.
_PLAIN_PUBLISH_KEYS = frozenset({"exchange", "routing_key", "serializer", "compression", "retry", "retry_policy",
                                 "delivery_mode", "declare", "headers", "timeout", "confirm_timeout", "content_type",
                                 "content_encoding", "correlation_id", "reply_to", "priority"})


def _direct_properties(published: dict) -> dict | None:
    """The properties of the AMQP message kombu's ``Producer.publish`` makes from ``published``, when the
    channel can take it directly (the same message, without kombu's per-call argument handling)."""
    if (published.keys() - _PLAIN_PUBLISH_KEYS or published.get("compression") or not published.get("content_type")
            or not isinstance(published.get("exchange"), str)):
        return None
    return {"delivery_mode": compat.delivery_mode_property(published.get("delivery_mode"))}


def derivable_task(task) -> bool:
    """Whether every plain call of ``task`` makes the same message but for what ``derive_message`` sets:
    no shadow name, argument conversion, default ``expires``/``countdown`` computed per call, protocol 2,
    routes by task name, and a result backend with nothing to do per publish."""
    return (type(task).shadow_name is Task.shadow_name and not compat.converts_arguments(task)
            and not task.expires and not getattr(task, "countdown", None) and task.app.conf.task_protocol == 2
            and compat.derivable_by_routes_and_backend(task.app))


def record_template(app, send, producer, name, message, **kwargs):
    """Publish through Celery's ``send``; returns what it returned and this message's ``Template`` (None when
    the message is not one a plain call of its task makes every time)."""
    headers = dict(message.headers)  # as built: before per-call headers and publish-signal receivers change it
    properties = dict(message.properties)  # Celery adds the send arguments it does not name to these
    published = {}
    with compat.recording_publish(producer, lambda body, publish_kwargs: published.update(publish_kwargs)):
        sent = send(producer, name, message, **kwargs)
    if (kwargs.get("headers") or (published.get("headers") or {}).get("id") != headers["id"]
            or any(headers.get(k) for k in ("eta", "expires", "group", "shadow", "stamped_headers"))
            or "expiration" in published):
        return sent, None  # per-call headers (a library wrapping apply_async), or not a plain message
    embed = loads(message.body, published["content_type"], published["content_encoding"])[2]
    if embed != PLAIN_EMBED:
        return sent, None
    # Celery passes the message's properties to kombu's publish as keyword arguments, after publish-signal
    # receivers had them: the template keeps them as they were before (receivers run again per derived call).
    signal_properties = {k: v for k, v in {**properties, **kwargs}.items()
                         if k not in compat.TASK_SENDER_ARGUMENTS and k not in ("correlation_id", "reply_to")}
    publish_kwargs = {**{k: v for k, v in published.items() if k not in message.properties}, **signal_properties,
                      "headers": lean_headers(headers)}
    return sent, Template(
        publish_kwargs=publish_kwargs,
        serializer=publish_kwargs["content_type"].split("/")[-1],
        embed=embed,
        own_root=headers.get("root_id") == headers["id"],
        signal_properties=signal_properties,
        sent_event=dict(message.sent_event) if message.sent_event else None,
        ignore_result=bool(headers.get("ignore_result")),
        declared=compat.declaration_keys(published.get("declare")),
        reprs=(app.amqp.argsrepr_maxsize, app.amqp.kwargsrepr_maxsize, app.conf.task_repr_maxlevels),
        properties=_direct_properties(publish_kwargs),
        timeouts={k: published[k] for k in ("timeout", "confirm_timeout") if published.get(k) is not None})


def derive_message(name: str, template: Template, args, kwargs, task_id: str) -> tuple[bytes, dict]:
    """Body and headers of a call copied from a template message (here and in bulk enqueue): this call's
    id (and root id when the template was its own root), arguments and their reprs as Celery's ``as_task_v2``
    makes them; the size guard applies."""
    args, kwargs = args or (), kwargs or {}
    body = dumps((args, kwargs, template.embed), template.serializer)[2]
    check_message_size(name, body)
    args_size, kwargs_size, levels = template.reprs
    headers = {**template.publish_kwargs["headers"], "id": task_id,
               "argsrepr": saferepr(args, args_size, maxlevels=levels) if args else "()",
               "kwargsrepr": saferepr(kwargs, kwargs_size, maxlevels=levels) if kwargs else "{}"}
    if template.own_root:
        headers["root_id"] = task_id
    return body, headers


def sent_event_for(template_fields: dict, headers: dict) -> dict:
    """The task-sent event fields of a derived message."""
    return {**template_fields, "uuid": headers["id"], "root_id": headers["root_id"], "args": headers["argsrepr"],
            "kwargs": headers["kwargsrepr"]}


def send_before_publish(name: str, template: Template, body, headers: dict, properties: dict) -> None:
    """``before_task_publish`` for a derived message, with what Celery passes (receivers may change
    ``headers`` and ``properties``)."""
    publish_kwargs = template.publish_kwargs
    signals.before_task_publish.send(
        sender=name, body=body, exchange=publish_kwargs["exchange"], routing_key=publish_kwargs["routing_key"],
        declare=publish_kwargs.get("declare"), headers=headers, properties=properties,
        retry_policy=publish_kwargs.get("retry_policy"))


def send_after_publish(name: str, template: Template, body, headers: dict) -> None:
    signals.after_task_publish.send(sender=name, body=body, headers=headers,
                                    exchange=template.publish_kwargs["exchange"],
                                    routing_key=template.publish_kwargs["routing_key"])


_templates: dict[str, Template] = {}
os.register_at_fork(after_in_child=_templates.clear)
sent_events = SentEventBuffer()


def _keep_template(app, task_name: str, send, producer, name, message, **kwargs):
    """The recorder apps/core/amqp.py calls with this call's message: publish it, keep its template."""
    sent, template = record_template(app, send, producer, name, message, **kwargs)
    if template is not None and name == task_name and template.own_root:
        _templates[name] = template
    return sent


def apply_async(task, args, kwargs, task_id, celery_apply_async):
    """Send a plain call of ``task`` from its template, or through ``celery_apply_async`` (recording one)."""
    app = task.app
    if (not compat.derivation_enabled() or active_batch() is not None or app.current_worker_task is not None
            or not isinstance(args or (), (list, tuple)) or not isinstance(kwargs or {}, Mapping)):
        return celery_apply_async()  # (Celery raises the TypeError for arguments of the wrong type)
    template = _templates.get(task.name)
    if template is None:  # also always in eager mode: nothing is published there, so nothing is recorded
        set_recorder(partial(_keep_template, app, task.name))
        try:
            return celery_apply_async()
        finally:
            set_recorder(None)  # not used when Celery published nothing (or published on a delay path)
    compat.check_call_arguments(task, args or (), kwargs or {})  # TypeError for a wrong call, as Celery raises
    return _send_from_template(app, task, template, args, kwargs, task_id or uuid())


def _kombu_publish_kwargs(template: Template, headers: dict, properties: dict, declared: bool, **overrides) -> dict:
    kwargs = {**template.publish_kwargs, **properties, "headers": headers, **overrides}
    if declared:
        kwargs["declare"] = []  # declared on this connection already: skip kombu's per-call check
    return kwargs


def _send_from_template(app, task, template: Template, args, kwargs, task_id: str):
    publish_kwargs = template.publish_kwargs
    body, headers = derive_message(task.name, template, args, kwargs, task_id)
    reply_to = app.thread_oid
    properties = {**template.signal_properties, "correlation_id": task_id, "reply_to": reply_to}
    direct = template.properties is not None
    if signals.before_task_publish.receivers:
        before = dict(properties)
        send_before_publish(task.name, template, body, headers, properties)
        direct = direct and properties == before  # a receiver changed a property: kombu's publish sends it
    with app.pool.acquire(block=True) as connection:
        with compat.library_errors(connection):
            producer = compat.kept_task_producer(connection)
            declared = compat.declared_on(connection, template.declared)
            try:
                try:  # kombu's retry wrapper costs on every call: used only once the connection failed
                    if declared and direct:
                        compat.publish_prepared(
                            producer.channel, body, publish_kwargs.get("priority", compat.KOMBU_DEFAULT_PRIORITY),
                            publish_kwargs["content_type"], publish_kwargs.get("content_encoding") or "utf-8",
                            headers, {**template.properties, "correlation_id": task_id, "reply_to": reply_to},
                            publish_kwargs["exchange"], publish_kwargs["routing_key"], **template.timeouts)
                    else:
                        producer.publish(body, **_kombu_publish_kwargs(template, headers, properties, declared,
                                                                       retry=False))
                except connection.recoverable_connection_errors + connection.recoverable_channel_errors:
                    if not publish_kwargs.get("retry"):
                        raise
                    # Reconnects, declares again and retries as the policy says.
                    producer.publish(body, **_kombu_publish_kwargs(template, headers, properties, False))
            except Exception as exc:
                full = queue_full_error(exc, task.name, task_id, publish_kwargs["routing_key"])
                if full is None:
                    raise
                # Raised inside the block: kombu replaces the pooled connection, so the next publish starts on
                # a fresh channel. Keeping it after a prompt nack (a full queue answers at once) also kept a
                # channel whose quorum-queue client still pointed at a killed leader: it nacked every publish
                # to that lane for the rest of a cluster case (552 refused; docs/reliability.md).
                raise full from exc
    if signals.after_task_publish.receivers:
        send_after_publish(task.name, template, body, headers)
    if template.sent_event is not None:  # after the confirm, in the background, with others
        sent_events.add(app, sent_event_for(template.sent_event, headers))
    result = task.AsyncResult(task_id)
    result.ignored = template.ignore_result
    return result
