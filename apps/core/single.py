"""A single ``apply_async`` without Celery's per-message build: messages derived from a per-process template.

Profiled (docs/benchmarks.md), one ``apply_async`` spent about as long in Celery's client-side work as in
the broker round trip: option merging, routing, building the protocol-2 message (``as_task_v2``),
layered configuration lookups. For a plain call (arguments only: no options, links, producer or shadow;
not from inside a task; no default ``expires``/``countdown``) all of that yields the same message every
time except for the id, the arguments and their reprs. So the first plain call of each task in a process
goes through Celery, and the message it published (the keyword arguments kombu's ``publish`` got, the
body's embed, the task-sent event) becomes that task's template; later plain calls copy it with their own
id, root id, arguments, reprs, body and ``reply_to``, and publish it the same way:

* on a pooled producer, with publisher confirms, the same retry policy and queue declaration;
* the size guard on every body; a broker nack raises ``QueueFull`` as on Celery's path;
* ``before_task_publish`` / ``after_task_publish`` are sent when anything listens (tracing does: its
  publish span and trace context are per call), and the ``task-sent`` event the ledger needs;
* argument checking (``task.typing``) as Celery does it.

Anything else (options, a canvas, a call from a running task, eager mode, a confirmed batch) takes
Celery's own path. Templates are per process (cleared in forked children: the ``origin`` header names
the process).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

from celery import signals
from celery.utils.saferepr import saferepr
from kombu import Producer
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps, loads
from kombu.utils.uuid import uuid

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
    publish_kwargs: dict  # what kombu's Producer.publish got, headers and properties included
    serializer: str
    sent_event: dict | None  # task-sent fields (queue, exchange, routing key...), None when not sent
    ignore_result: bool
    declared: frozenset  # kombu's cache keys of the queues publish declares, once per connection
    repr_size: int  # Celery's argsrepr_maxsize
    properties: dict | None  # the AMQP properties kombu would send; None: this message needs kombu's publish
    timeouts: dict  # publish and confirm timeouts Celery passes, when set


# What Celery passes kombu's publish for a plain call; anything else (compression, expiration, priority...)
# keeps the template on kombu's own publish.
_PLAIN_PUBLISH_KEYS = frozenset({"exchange", "routing_key", "serializer", "compression", "retry", "retry_policy",
                                 "delivery_mode", "declare", "headers", "timeout", "confirm_timeout", "content_type",
                                 "content_encoding", "correlation_id", "reply_to"})


def _direct_properties(published: dict) -> dict | None:
    """The properties of the AMQP message kombu's ``Producer.publish`` makes from ``published``, when the
    channel can take it directly (the same message, without kombu's per-call argument handling)."""
    if (published.keys() - _PLAIN_PUBLISH_KEYS or published.get("compression") or not published.get("content_type")
            or not isinstance(published.get("exchange"), str)):
        return None
    return {"delivery_mode": maybe_delivery_mode(published.get("delivery_mode"))}


_templates: dict[str, Template] = {}
os.register_at_fork(after_in_child=_templates.clear)
sent_events = SentEventBuffer()


def _record_template(app, send, producer, name, message, **kwargs):
    """Publish through Celery (``send``), keeping what kombu was asked to publish as ``name``'s template."""
    published = {}
    original = producer.publish

    def recording_publish(body, **publish_kwargs):
        published.update(publish_kwargs)
        return original(body, **publish_kwargs)

    producer.publish = recording_publish
    try:
        sent = send(producer, name, message, **kwargs)
    finally:
        del producer.publish  # back to the class's method
    headers = published.get("headers") or {}
    if (headers.get("id") == message.headers.get("id") and headers.get("root_id") == headers.get("id")
            and not headers.get("parent_id") and not headers.get("eta") and not headers.get("expires")
            and not headers.get("group") and "expiration" not in published
            and loads(message.body, published["content_type"], published["content_encoding"])[2] == PLAIN_EMBED):
        _templates[name] = Template(
            publish_kwargs={**{k: v for k, v in published.items() if k not in ("correlation_id", "reply_to")},
                            "headers": lean_headers(headers)},
            serializer=published["content_type"].split("/")[-1],
            sent_event=dict(message.sent_event) if message.sent_event else None,
            ignore_result=bool(headers.get("ignore_result")),
            declared=frozenset(hash(entity) for entity in published.get("declare") or ()),
            repr_size=app.amqp.argsrepr_maxsize,
            properties=_direct_properties(published),
            timeouts={k: published[k] for k in ("timeout", "confirm_timeout") if published.get(k) is not None})
    return sent


def apply_async(task, args, kwargs, task_id, celery_apply_async):
    """Send a plain call of ``task`` from its template, or through ``celery_apply_async`` (recording one)."""
    app = task._get_app()
    if active_batch() is not None or app.current_worker_task is not None:
        return celery_apply_async()
    template = _templates.get(task.name)
    if template is None:  # also always in eager mode: nothing is published there, so nothing is recorded
        set_recorder(partial(_record_template, app))
        try:
            return celery_apply_async()
        finally:
            set_recorder(None)  # not used when Celery published nothing (or published on a delay path)
    if task.typing:
        task.__header__(*(args or ()), **(kwargs or {}))  # TypeError for a wrong call, as Celery raises
    return _send_from_template(app, task, template, tuple(args or ()), dict(kwargs or {}), task_id or uuid())


def _task_producer(connection) -> Producer:
    """A producer kept on a pooled connection (one holder at a time), made again after a reconnect.

    Celery's producer pool re-binds its producer's exchange on every checkout (a third of the client
    time of a templated call in the profile)."""
    channel = connection.default_channel  # reconnects a pooled connection kombu closed after an error
    producer = getattr(connection, "_platform_task_producer", None)
    if producer is None or producer.channel is not channel:
        producer = Producer(channel, auto_declare=False)
        connection._platform_task_producer = producer
    return producer


def _publish_on_channel(channel, template: Template, body, headers: dict, task_id: str, reply_to: str) -> None:
    """What kombu's ``Producer.publish`` ends in for this message: the channel's ``basic_publish`` (confirmed).

    Profiled against a raw kombu publish, kombu's argument handling around it (delivery details, body
    preparation, declare and batch checks, two dict builds) cost more than the platform's own
    derivation. The message is built the way kombu's ``prepare_message`` builds it."""
    kwargs = template.publish_kwargs
    encoding = kwargs.get("content_encoding") or "utf-8"
    if isinstance(body, str):
        body = body.encode(encoding)
    channel.basic_publish(
        channel.prepare_message(body, None, kwargs["content_type"], encoding, headers,
                                {**template.properties, "correlation_id": task_id, "reply_to": reply_to}),
        kwargs["exchange"], kwargs["routing_key"], **template.timeouts)


def _kombu_publish_kwargs(template: Template, headers: dict, task_id: str, reply_to: str, declared: bool,
                          **overrides) -> dict:
    kwargs = {**template.publish_kwargs, "headers": headers, "correlation_id": task_id, "reply_to": reply_to,
              **overrides}
    if declared:
        kwargs["declare"] = []  # declared on this connection already: skip kombu's per-call check
    return kwargs


def derive_message(name: str, template_headers: dict, serializer: str, embed: dict, repr_size: int, args: tuple,
                   kwargs: dict, task_id: str, own_root: bool = True) -> tuple[str, dict]:
    """Body and headers of a call copied from a template message (here and in bulk enqueue): this call's
    id (and root id when the template was its own root), arguments and their reprs; the size guard applies."""
    body = dumps((args, kwargs, embed), serializer)[2]
    check_message_size(name, body)
    headers = {**template_headers, "id": task_id, "argsrepr": saferepr(args, repr_size) if args else "()",
               "kwargsrepr": saferepr(kwargs, repr_size) if kwargs else "{}"}
    if own_root:
        headers["root_id"] = task_id
    return body, headers


def sent_event_for(template_fields: dict, headers: dict) -> dict:
    """The task-sent event fields of a derived message."""
    return {**template_fields, "uuid": headers["id"], "root_id": headers["root_id"], "args": headers["argsrepr"],
            "kwargs": headers["kwargsrepr"]}


def _send_from_template(app, task, template: Template, args: tuple, kwargs: dict, task_id: str):
    publish_kwargs = template.publish_kwargs
    body, headers = derive_message(task.name, publish_kwargs["headers"], template.serializer, PLAIN_EMBED,
                                   template.repr_size, args, kwargs, task_id)
    exchange, routing_key = publish_kwargs["exchange"], publish_kwargs["routing_key"]
    reply_to = app.thread_oid
    if signals.before_task_publish.receivers:
        signals.before_task_publish.send(
            sender=task.name, body=body, exchange=exchange, routing_key=routing_key,
            declare=publish_kwargs.get("declare"), headers=headers,
            properties={"correlation_id": task_id, "reply_to": reply_to},
            retry_policy=publish_kwargs.get("retry_policy"))
    with app.pool.acquire(block=True) as connection:
        with connection._reraise_as_library_errors():
            producer = _task_producer(connection)
            declared = template.declared <= connection.declared_entities
            try:
                try:  # kombu's retry wrapper costs on every call: used only once the connection failed
                    if declared and template.properties is not None:
                        _publish_on_channel(producer.channel, template, body, headers, task_id, reply_to)
                    else:
                        producer.publish(body, **_kombu_publish_kwargs(template, headers, task_id, reply_to,
                                                                       declared, retry=False))
                except connection.recoverable_connection_errors + connection.recoverable_channel_errors:
                    if not publish_kwargs.get("retry"):
                        raise
                    # Reconnects, declares again and retries as the policy says.
                    producer.publish(body, **_kombu_publish_kwargs(template, headers, task_id, reply_to, False))
            except Exception as exc:
                full = queue_full_error(exc, task.name, task_id, routing_key)
                if full is None:
                    raise
                raise full from exc
    if signals.after_task_publish.receivers:
        signals.after_task_publish.send(sender=task.name, body=body, headers=headers, exchange=exchange,
                                        routing_key=routing_key)
    if template.sent_event is not None:  # after the confirm, in the background, with others
        sent_events.add(app, sent_event_for(template.sent_event, headers))
    result = task.AsyncResult(task_id)
    result.ignored = template.ignore_result
    return result
