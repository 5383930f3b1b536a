"""apps/core/compat.py: what the platform relies on inside kombu, checked so that an upgrade that moves it
fails here, loudly, instead of quietly bringing back a 14 s stall after a failover (docs/reliability.md)."""
import inspect
from unittest import mock

import kombu.common
import kombu.connection
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
