"""apps/core/compat.py: what the platform relies on inside kombu, checked so that an upgrade that moves it
fails here, loudly, instead of quietly bringing back a 14 s stall after a failover (docs/reliability.md)."""
import inspect
from unittest import mock

import kombu.common
import kombu.connection
import kombu.exceptions
import pytest
from kombu import Exchange, Queue
from kombu.common import maybe_declare

from apps.core.cluster import ClusterConnection
from apps.core.compat import FailoverPooledConnection, KeptDeclarations

NODES = "memory://node-a//;memory://node-b//;memory://node-c//"


def queue() -> Queue:
    """A queue of the platform's durable topology (the dataset lane)."""
    from project import topology

    return topology.work_queues()[0]


def transient() -> Exchange:
    return Exchange("compat-probe.pidbox", "fanout", durable=False, auto_delete=True)


def test_the_kombu_names_compat_relies_on_are_where_they_were():
    Connection = kombu.connection.Connection
    for name in ("maybe_switch_next", "collect", "switch", "_connection_factory", "Pool", "_info"):
        assert callable(getattr(Connection, name, None)), f"kombu.Connection.{name} is gone"
    # The declaration cache: an instance set that kombu empties on reconnects, and that maybe_declare reads.
    assert "self.declared_entities = set()" in inspect.getsource(Connection.__init__)
    for method in (Connection.switch, Connection._connection_factory, Connection.collect):
        assert "self.declared_entities.clear()" in inspect.getsource(method), method.__name__
    assert "declared_entities" in inspect.getsource(kombu.common._maybe_declare)
    assert "ident = hash(entity)" in inspect.getsource(kombu.common._maybe_declare)  # the cache key
    # The pool builds its connections from the source's _info(), not with the source's class.
    assert "PooledConnection(self, **dict(self.connection._info(resolve=False)))" in inspect.getsource(
        kombu.connection.ConnectionPool.new)
    assert "self.close()" in inspect.getsource(Connection.switch)  # the polite close we skip on failover
    # maybe_switch_next runs inside kombu's except (compat reads the error being handled), before collect().
    ensure = inspect.getsource(Connection.ensure)
    assert "except conn_errors as exc:\n                        self.maybe_switch_next()" in ensure
    assert "self.maybe_switch_next()" in inspect.getsource(Connection._ensure_connection)
    assert "self._connection_factory" in inspect.getsource(Connection._ensure_connection)


def test_a_nack_is_not_a_recoverable_connection_error_on_the_platforms_connections():
    import amqp
    from amqp.exceptions import MessageNacked

    from project.celery import app

    # Entry 4 exists because py-amqp lists the nack there; if an upgrade stops doing so, the entry can go.
    assert MessageNacked in amqp.Connection.recoverable_connection_errors
    assert "recoverable_connection_errors" in inspect.getsource(kombu.connection.Connection.ensure)
    for connection in (app.connection_for_write(), app.pool.acquire(block=True)):
        try:
            errors = connection.recoverable_connection_errors
            assert MessageNacked not in errors and OSError in errors, errors  # the rest kept
        finally:
            connection.release()


def test_celery_builds_every_connection_and_pooled_connection_as_a_cluster_connection():
    from project.celery import app

    assert app.amqp.Connection is ClusterConnection
    connection = app.connection_for_write(NODES)
    assert isinstance(connection, ClusterConnection) and isinstance(connection.declared_entities, KeptDeclarations)
    pooled = connection.Pool(limit=1).acquire()
    try:
        assert isinstance(pooled, FailoverPooledConnection) and isinstance(pooled.declared_entities, KeptDeclarations)
    finally:
        pooled.release()


def test_a_failover_keeps_the_declarations_and_drops_the_old_socket_without_a_handshake():
    with ClusterConnection(NODES) as connection:
        entity = queue()
        assert maybe_declare(entity, connection.default_channel) is True
        first = connection.hostname
        with mock.patch.object(connection, "collect", wraps=connection.collect) as collect:
            connection.maybe_switch_next()
        assert connection.hostname != first
        collect.assert_called_once()  # the socket is dropped before kombu's switch would close it politely
        assert hash(entity) in connection.declared_entities
        assert maybe_declare(entity, connection.default_channel) is False  # not declared again on the next node
        other = transient()
        maybe_declare(other, connection.default_channel)
        connection._connection_factory()  # a reconnect empties kombu's set; this one keeps the durable topology
        assert hash(entity) in connection.declared_entities
        assert hash(other) not in connection.declared_entities  # a transient one is gone after a node restart
        connection.declared_entities.forget()
        assert not connection.declared_entities


def test_a_single_url_keeps_kombus_behaviour():
    with ClusterConnection("memory://node-a//") as connection:
        assert type(connection.declared_entities) is set
        entity = queue()
        maybe_declare(entity, connection.default_channel)
        connection._connection_factory()
        assert hash(entity) not in connection.declared_entities


def test_a_failover_skips_a_node_found_unreachable_just_now_unless_all_are():
    from apps.core import compat

    compat._unreachable.clear()
    try:
        with ClusterConnection(NODES) as connection:
            assert connection.hostname == "node-a"
            compat.mark_unreachable(("node-b", None))
            connection.maybe_switch_next()
            assert connection.hostname == "node-c"  # round-robin would have gone to node-b
            try:  # a connect that failed marks its node (kombu calls maybe_switch_next inside its except)
                raise ConnectionRefusedError(111, "refused")
            except OSError:
                connection._connection = None
                connection.maybe_switch_next()
            assert compat.is_unreachable(("node-c", None)) and connection.hostname == "node-a"
            try:  # a confirm timeout on an open connection does not: the node answers
                raise TimeoutError("timed out")
            except OSError:
                connection._connection = object()
                with mock.patch.object(connection, "collect"):
                    connection.maybe_switch_next()
            assert not compat.is_unreachable(("node-a", None))
            assert connection.hostname == "node-a"  # b and c unreachable: a again (next healthy in the cycle)
            compat.mark_unreachable(("node-a", None))
            connection._connection = None
            connection.maybe_switch_next()  # every node unreachable: kombu's order (the next one)
            assert connection.hostname == "node-b"
    finally:
        compat._unreachable.clear()


def test_a_connection_starting_on_a_node_found_unreachable_starts_on_the_next_one():
    from apps.core import compat

    compat._unreachable.clear()
    try:
        compat.mark_unreachable(("node-a", None))
        with ClusterConnection(NODES) as connection:
            connection.connect()
            assert connection.hostname == "node-b"
        for node in ("node-b", "node-c"):
            compat.mark_unreachable((node, None))
        with ClusterConnection(NODES) as connection:  # all of them: where kombu would start
            connection.connect()
            assert connection.hostname == "node-a"
    finally:
        compat._unreachable.clear()


class SilentNode:
    """A TCP port that accepts connections and never answers the AMQP handshake, as a node cut off by a
    partition looks to a connect (there the SYN goes unanswered; either way the connect times out)."""

    def __init__(self):
        import socket
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.attempts = 0
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.attempts += 1
            self.held.append(client)

    def close(self):
        self.server.close()
        for client in self.held:
            client.close()


def test_a_first_connect_that_times_out_goes_on_to_the_next_node_and_the_next_connection_skips_it(broker_url):
    from apps.core import compat

    silent = SilentNode()
    nodes = f"{broker_url.replace('127.0.0.1:5672', f'127.0.0.1:{silent.port}')};{broker_url}"
    compat._unreachable.clear()
    try:
        for _ in range(2):  # each as a new pooled connection starts: on the first URL of the list
            with ClusterConnection(nodes, connect_timeout=1) as connection:
                connection.default_channel  # the first publish's connect (kombu: retry budget = connect timeout)
                assert connection.port == 5672  # not an error raised to the caller
        assert silent.attempts == 1  # the second connection went straight to the node that answers
        assert compat.is_unreachable(("127.0.0.1", silent.port))
    finally:
        compat._unreachable.clear()
        silent.close()


def test_a_connect_fails_when_every_node_failed_just_now():
    from apps.core import compat

    silent = [SilentNode(), SilentNode()]
    compat._unreachable.clear()
    try:
        with ClusterConnection(";".join(f"amqp://guest:guest@127.0.0.1:{s.port}//" for s in silent),
                               connect_timeout=1) as connection:
            with pytest.raises(kombu.exceptions.OperationalError):
                connection.default_channel
        assert [s.attempts for s in silent] == [1, 1]
    finally:
        compat._unreachable.clear()
        for s in silent:
            s.close()


# --- Worker and events: the section at the end of apps/core/compat.py ---


def test_the_celery_names_the_worker_and_events_rely_on_are_where_they_were():
    import amqp.channel
    import amqp.connection
    import celery.app.base
    from celery.app.amqp import AMQP
    from celery.events.dispatcher import EventDispatcher
    from celery.worker import loops
    from kombu.transport import native_delayed_delivery, pyamqp
    from kombu.utils.objects import cached_property

    from apps.core import compat

    # drain_event_connection_without_waiting: the green loop drains the event connection through this name.
    assert list(inspect.signature(loops._quick_drain).parameters) == ["connection", "timeout"]
    assert "_quick_drain(obj.event_dispatcher.connection)" in inspect.getsource(loops.synloop)
    # channel_without_confirms / connection_without_confirms: py-amqp binds the confirming publish per channel,
    # from its connection's flag, which kombu passes from transport_options.
    assert ("if self.connection.confirm_publish:\n            self.basic_publish = self.basic_publish_confirm"
            in inspect.getsource(amqp.channel.Channel.__init__))
    assert "self.confirm_publish = confirm_publish" in inspect.getsource(amqp.connection.Connection.__init__)
    assert "**conninfo.transport_options or {})" in inspect.getsource(pyamqp.Transport.establish_connection)
    # celery_event_dispatcher / prepare_event / publish_event_batch.
    assert isinstance(AMQP.__dict__.get("_event_dispatcher"), cached_property)
    assert "self.app.events.Dispatcher(enabled=False)" in inspect.getsource(AMQP.__dict__["_event_dispatcher"].func)
    assert list(inspect.signature(EventDispatcher._prepare_event).parameters)[:3] == ["self", "type", "fields"]
    assert list(inspect.signature(EventDispatcher._publish).parameters)[:4] == [
        "self", "event", "producer", "routing_key"]
    assert "self._publish(batch, self.producer, '%s.multi' % group)" in inspect.getsource(EventDispatcher.flush)
    # strip_delay_prefix: kombu's pattern, the one its calculate_routing_key strips.
    assert "_delay_prefix_re.sub('', routing_key, count=1)" in inspect.getsource(
        native_delayed_delivery.calculate_routing_key)
    # DropDirectExchangeWarning: Celery's text, on the logger the filter is installed on.
    assert compat.CELERY_DIRECT_EXCHANGE_WARNING in inspect.getsource(celery.app.base.Celery.send_task)
    assert celery.app.base.logger.name == "celery.app.base"


def test_the_green_loop_drains_the_event_connection_without_waiting():
    import socket

    from celery.worker import loops

    from apps.core import compat

    celerys = loops._quick_drain
    try:
        compat.drain_event_connection_without_waiting()
        compat.drain_event_connection_without_waiting()  # again (a second consumer): not wrapped twice
        connection = mock.Mock()
        loops._quick_drain(connection)
        connection.drain_events.assert_called_once_with(timeout=0)
        connection.drain_events.side_effect = socket.timeout()  # nothing there: Celery's drain lets it pass
        loops._quick_drain(connection)
    finally:
        loops._quick_drain = celerys


def test_events_publish_without_confirms_on_a_connection_that_asks_for_them(broker_url):
    import amqp

    from apps.core import compat

    with kombu.connection.Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        channel = connection.channel()
        assert "basic_publish" in channel.__dict__  # py-amqp bound the confirming publish on this channel
        assert compat.channel_without_confirms(channel).basic_publish.__func__ is amqp.Channel.basic_publish
        compat.connection_without_confirms(connection)
        assert "basic_publish" not in connection.channel().__dict__
        connection.collect()
        connection.connect()  # a reconnect: a new py-amqp connection, built from the transport options
        assert "basic_publish" not in connection.channel().__dict__
        assert connection.transport_options == {"confirm_publish": False}


def test_a_batch_of_task_sent_events_reaches_the_event_exchange_as_celery_prepares_them(broker_url):
    import os
    import time

    from kombu import Producer

    from apps.core import compat
    from project.celery import app

    dispatcher = compat.celery_event_dispatcher(app)
    assert dispatcher is compat.celery_event_dispatcher(app) and not dispatcher.enabled
    events = [compat.prepare_event(dispatcher, "task-sent", {"uuid": uuid, "timestamp": 1.0}) for uuid in "ab"]
    assert events[0]["type"] == "task-sent" and events[0]["timestamp"] == 1.0  # the caller's time is kept
    assert events[0]["hostname"] == dispatcher.hostname and events[0]["pid"] == os.getpid()
    assert events[1]["clock"] > events[0]["clock"]
    with kombu.connection.Connection(broker_url) as connection:
        probe = Queue("compat-probe-events", dispatcher.exchange, routing_key="task.#", exclusive=True)(
            connection.default_channel)
        probe.declare()
        compat.publish_event_batch(dispatcher, events, Producer(connection.channel()))
        deadline = time.monotonic() + 5
        while (message := probe.get(no_ack=True)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert message is not None, "no task.multi message on the event exchange"
        assert message.delivery_info["routing_key"] == "task.multi"
        assert [event["uuid"] for event in message.decode()] == ["a", "b"]


def test_a_failed_event_batch_publish_raises_and_nothing_is_kept_in_the_dispatcher():
    """Celery's dispatcher buffers a failed publish in memory by default (``buffer_while_offline``); this
    disabled dispatcher never flushes it, so the batch must raise to its caller instead."""
    from apps.core import compat
    from project.celery import app

    class Refusing:
        def publish(self, *args, **kwargs):
            raise ConnectionResetError("broker gone")

    dispatcher = compat.celery_event_dispatcher(app)
    kept = len(dispatcher._outbound_buffer)
    events = [compat.prepare_event(dispatcher, "task-sent", {"uuid": "c", "timestamp": 1.0})]
    with pytest.raises(ConnectionResetError, match="broker gone"):
        compat.publish_event_batch(dispatcher, events, Refusing())
    assert len(dispatcher._outbound_buffer) == kept


def test_celerys_direct_exchange_warning_is_dropped_and_nothing_else():
    import logging

    from apps.core import compat

    compat.drop_celerys_direct_exchange_warning()
    compat.drop_celerys_direct_exchange_warning()
    celery_logger = logging.getLogger("celery.app.base")
    assert sum(isinstance(f, compat.DropDirectExchangeWarning) for f in celery_logger.filters) == 1

    def record(message):
        return logging.LogRecord("celery.app.base", logging.WARNING, __file__, 1, message, None, None)

    assert not celery_logger.filter(record(f"{compat.CELERY_DIRECT_EXCHANGE_WARNING}.\nmail is a direct exchange"))
    assert celery_logger.filter(record("abc has an expiration date in the past (3s ago)."))


def test_a_retried_messages_delay_prefix_is_stripped_as_kombu_writes_it():
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    from apps.core import compat

    assert compat.strip_delay_prefix(calculate_routing_key(300, "mail")) == "mail"
    assert compat.strip_delay_prefix("mail") == "mail"
    assert compat.strip_delay_prefix("1.0.mail") == "1.0.mail"  # not a full prefix: a routing key of its own


def test_one_result_backend_serves_every_thread_with_celerys_thread_safe_setting():
    """What PlatformConsumer sets on eventlet (apps/core/consumer.py share_backend_between_green_threads)
    instead of replacing Celery's private per-thread store: a documented setting, checked here because the
    io worker's throughput depends on it (a new backend per task: 16% of its time)."""
    import threading

    from celery import Celery

    def backends(thread_safe: bool) -> list:
        app = Celery(set_as_current=False)
        app.conf.update(result_backend="apps.core.results:PlatformDatabaseBackend",
                        result_backend_thread_safe=thread_safe)
        seen = [app.backend]
        thread = threading.Thread(target=lambda: seen.append(app.backend))
        thread.start()
        thread.join()
        return seen

    first, other = backends(thread_safe=True)
    assert first is other
    first, other = backends(thread_safe=False)
    assert first is not other  # Celery's default: one per thread


@pytest.mark.django_db(transaction=True)
def test_the_eventlet_worker_drains_without_waiting_and_shares_one_result_backend(io_worker):
    """Both are applied when the worker builds its consumer. Measured with neither (300 io_echo tasks on the
    io worker): 32.8 s, and 20 tasks in parallel had 20 backends; with both: 1.6 s, one backend."""
    from celery import group

    from tests.support.tasks import io_worker_internals

    results = group(io_worker_internals.s() for _ in range(20)).apply_async().get(timeout=60)
    assert all(result["drain_without_waiting"] for result in results)
    assert len({result["backend"] for result in results}) == 1


# --- Publishing: what apps/core/single.py, bulk.py and amqp.py reach for (apps/core/compat.py, Publishing) ---

def test_the_derivation_is_pinned_to_the_versions_requirements_install_and_the_golden_test_ran_on():
    import re
    from pathlib import Path

    from apps.core import compat

    pins = dict(re.findall(r"^(celery|kombu|amqp)==(\S+)", (Path(__file__).parents[2] / "requirements" / "base.txt")
                           .read_text(), re.M))
    assert pins == compat.DERIVATION_TESTED_ON  # change both together, after tests/core/test_golden_messages.py
    assert compat.installed_versions() == compat.DERIVATION_TESTED_ON
    assert compat.derivation_enabled() is True


def test_on_other_versions_every_call_takes_celerys_path_with_one_warning(broker_url, caplog, monkeypatch):
    import importlib.metadata
    import logging

    from apps.core import bulk, compat, single
    from apps.core.bulk import enqueue_many
    from tests.support.tasks import io_echo

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "5.9.1" if name == "celery" else real_version(name))
    monkeypatch.setattr(compat, "_derivation", None)
    single._templates.pop(io_echo.name, None)
    with caplog.at_level(logging.WARNING, logger="apps.core.compat"), \
            mock.patch.object(single, "derive_message") as single_derived, \
            mock.patch.object(bulk, "derive_message") as bulk_derived, \
            mock.patch.object(single, "record_template", wraps=single.record_template) as recorded:
        assert compat.derivation_enabled() is False
        results = [io_echo.delay(f"v{i}") for i in range(3)] + enqueue_many(io_echo.s(f"b{i}") for i in range(3))
        assert compat.derivation_enabled() is False
    assert len({r.id for r in results}) == 6
    assert not single_derived.called and not bulk_derived.called and not recorded.called  # Celery built each one
    assert io_echo.name not in single._templates
    warnings = [r.getMessage() for r in caplog.records if r.name == "apps.core.compat"]
    assert len(warnings) == 1 and "celery 5.9.1" in warnings[0] and "derivation is off" in warnings[0]


def test_celerys_task_sender_is_built_by_the_method_the_hook_wraps_and_takes_the_arguments_it_names():
    from celery.app.amqp import AMQP

    from apps.core import compat
    from apps.core.amqp import PlatformAMQP
    from project.celery import app

    assert "return self._create_task_sender()" in inspect.getsource(AMQP.send_task_message.func)
    assert isinstance(app.amqp, PlatformAMQP) and isinstance(app.amqp, compat.TaskSenderHook)
    assert app.amqp.send_task_message.__qualname__.startswith("PlatformAMQP.wrap_task_sender")
    sender = AMQP._create_task_sender(app.amqp)
    parameters = inspect.signature(sender).parameters
    named = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty}
    assert named == compat.TASK_SENDER_ARGUMENTS  # the rest become message properties
    assert list(parameters)[:3] == ["producer", "name", "message"]
    source = inspect.getsource(AMQP._create_task_sender)
    assert "properties.update(kwargs)" in source and "**properties" in source
    # A batch passes its own event dispatcher: Celery calls publish('task-sent', fields, producer, ...) on it.
    assert "evd = event_dispatcher or default_evd" in source
    assert "evd.publish('task-sent', sent_event,\n                            producer," in source


def test_kombus_publish_ends_in_the_channel_calls_the_direct_publish_makes():
    from kombu import Producer
    from kombu.transport.pyamqp import Channel as KombuChannel

    from apps.core import compat

    assert compat.KOMBU_DEFAULT_PRIORITY == inspect.signature(Producer.publish).parameters["priority"].default
    source = inspect.getsource(Producer._publish)
    assert "channel.prepare_message(\n            body, priority, content_type,\n            content_encoding, headers, properties," in source
    assert "return channel.basic_publish(message, **publish_kwargs)" in source
    assert "properties['delivery_mode']" in inspect.getsource(Producer.publish)
    assert "body = body.encode(content_encoding)" in inspect.getsource(Producer._prepare)
    assert list(inspect.signature(KombuChannel.prepare_message).parameters)[:7] == [
        "self", "body", "priority", "content_type", "content_encoding", "headers", "properties"]
    assert compat.delivery_mode_property(None) == 2 and compat.delivery_mode_property("transient") == 1


def test_the_direct_publish_and_a_confirm_less_batch_publish_reach_py_amqps_channel():
    import amqp

    from apps.core import compat

    parameters = list(inspect.signature(amqp.Channel._basic_publish).parameters)
    assert parameters[:8] == ["self", "msg", "exchange", "routing_key", "mandatory", "immediate", "timeout",
                              "confirm_timeout"]
    confirm = inspect.getsource(amqp.Channel.basic_publish_confirm)
    assert "ret = self._basic_publish(*args, **kwargs)" in confirm and "self.wait([spec.Basic.Ack" in confirm
    assert "self.basic_publish = self.basic_publish_confirm" in inspect.getsource(amqp.Channel.__init__)

    published, counted = [], []

    class Channel:
        def _basic_publish(self, *args, **kwargs):
            published.append((args, kwargs))

    channel = Channel()
    compat.publish_without_confirm_wait(channel, lambda: counted.append(1))
    channel.basic_publish("message", exchange="x", routing_key="k", confirm_timeout=3)
    assert published == [(("message",), {"exchange": "x", "routing_key": "k"})] and counted == [1]


def test_the_recording_publish_sees_what_kombu_gets_and_leaves_the_producer_as_it_was():
    from kombu import Connection, Producer

    from apps.core import compat

    with Connection("memory://compat-publish//") as connection:
        producer = Producer(connection.default_channel, auto_declare=False)
        seen = []
        with compat.recording_publish(producer, lambda body, kwargs: seen.append((body, kwargs))) as publish:
            producer.publish({"a": 1}, routing_key="r", headers={"h": 1})
            assert publish.__func__ is Producer.publish
        assert seen == [({"a": 1}, {"routing_key": "r", "headers": {"h": 1}})]
        assert "publish" not in producer.__dict__
        kept = compat.kept_task_producer(connection)
        assert compat.kept_task_producer(connection) is kept and kept.channel is connection.default_channel


def test_kombus_declaration_cache_and_error_context_are_where_the_derivation_reads_them():
    import pytest
    from kombu import Connection, Queue
    from kombu.common import maybe_declare
    from kombu.exceptions import OperationalError

    from apps.core import compat

    with Connection("memory://compat-declare//") as connection:
        entity = Queue("compat-declare", durable=True)
        keys = compat.declaration_keys([entity])
        assert not compat.declared_on(connection, keys)
        maybe_declare(entity, connection.default_channel)
        assert compat.declared_on(connection, keys)
    with pytest.raises(OperationalError):  # py-amqp's socket errors become kombu's, as in Celery's send_task
        with compat.library_errors(Connection("amqp://guest:guest@127.0.0.1:1//")):
            raise ConnectionRefusedError(111, "refused")


def test_the_task_names_the_derivation_checks_are_celerys():
    import pytest
    from celery import Task
    from celery.backends.base import Backend

    from apps.core import compat, single
    from project.celery import app
    from tests.support import tasks

    io_echo, io_lineage = app.tasks[tasks.io_echo.name], app.tasks[tasks.io_lineage.name]
    # pydantic=True sets it on the task (pydantic itself is not installed here).
    assert Task._dump_pydantic_arguments is None and not compat.converts_arguments(io_echo)
    assert "_dump_pydantic_arguments" in inspect.getsource(type(app)._task_from_fun)
    assert compat.converts_arguments(mock.Mock(_dump_pydantic_arguments=lambda args, kwargs: (args, kwargs)))
    source = inspect.getsource(Task.apply_async)
    assert "check_arguments = self.__header__" in source
    assert "self._dump_pydantic_arguments(args, kwargs)" in source
    with pytest.raises(TypeError):
        compat.check_call_arguments(io_lineage, (), {})  # "value" missing
    compat.check_call_arguments(io_lineage, ("v",), {})
    assert "self.backend.on_task_call(P, task_id)" in inspect.getsource(type(app).send_task)
    assert type(app.backend).on_task_call is Backend.on_task_call  # django-db: nothing per publish
    assert compat.derivable_by_routes_and_backend(app) and single.derivable_task(io_echo)
    routes = app.amqp.router.routes
    with mock.patch.object(app.amqp.router, "routes", [*routes, lambda name, args, kwargs, options, task=None: None]):
        assert not compat.derivable_by_routes_and_backend(app)  # a router function may route on arguments


def test_task_sent_events_of_a_batch_are_prepared_and_published_as_celerys_dispatcher_does():
    from celery.events.dispatcher import EventDispatcher

    from apps.core import compat
    from project.celery import app

    assert "event = self._prepare_event(type, fields, blind=blind, Event=Event)" in inspect.getsource(
        EventDispatcher.publish)
    assert list(inspect.signature(EventDispatcher._publish).parameters)[:4] == [
        "self", "event", "producer", "routing_key"]
    dispatcher = app.events.Dispatcher(enabled=False)
    event = compat.prepare_task_sent_event(dispatcher, {"uuid": "x", "name": "t"})
    assert event["type"] == "task-sent" and event["uuid"] == "x" and {"clock", "hostname", "pid"} <= event.keys()
    producer = mock.Mock()
    compat.publish_task_sent_events(dispatcher, [event], producer)
    producer.publish.assert_called_once()
    assert producer.publish.call_args.args == ([event],)
    assert producer.publish.call_args.kwargs["routing_key"] == "task.multi"
