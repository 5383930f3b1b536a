"""The topology is consistent in code, in the start scripts, and in the running RabbitMQ."""
import inspect
import json
import re
from pathlib import Path

import pytest
from django.conf import settings

from apps.core.schedules import default_schedules
from project import topology
from project.celery import app
from tests.support import rabbit

ROOT = Path(settings.BASE_DIR)


def script_placement(role: str) -> dict:
    """The -P and -Q flags of a worker start script, as an operator would read them (the io role's pool is
    -P "$IO_POOL", whose default the script names)."""
    text = (ROOT / "compose" / "start" / role).read_text()
    pool = re.search(r'^exec celery .* -P (\w+|"\$IO_POOL")', text, re.M).group(1)
    if pool == '"$IO_POOL"':
        pool = re.search(r'^IO_POOL="\$\{IO_POOL:-(\w+)\}"', text, re.M).group(1)
    return {"pool": pool, "queues": re.search(r"-Q ([\w,]+)", text).group(1).split(",")}


def test_every_registered_task_routes_to_a_declared_queue_that_a_role_consumes():
    app.loader.import_default_modules()
    consumed = {queue for role in topology.ROLES.values() for queue in role["queues"]}
    unrouted = {}
    for name in app.tasks:
        options = app.amqp.router.route({}, name)
        queue = options["queue"].name
        if queue not in consumed:
            unrouted[name] = queue
        # The route names the queue's own direct exchange (not the default exchange).
        assert options.get("exchange") == queue and options.get("routing_key") == queue, name
    assert not unrouted, f"tasks routed to queues no role consumes: {unrouted}"


def test_start_scripts_consume_exactly_the_topology_roles():
    for role, spec in topology.ROLES.items():
        assert script_placement(role) == {"pool": spec["pool"], "queues": spec["queues"]}, role
    every_lane = {lane.name for lane in topology.LANES}
    assert every_lane == {q for spec in topology.ROLES.values() for q in spec["queues"]}


def test_missing_queues_are_never_created_and_serialization_is_json_only():
    assert app.conf.task_create_missing_queues is False
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.task_always_eager is False
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["confirm_publish"] is True
    assert app.conf.task_time_limit and app.conf.task_soft_time_limit < app.conf.task_time_limit
    assert app.conf.result_backend == "apps.core.results:PlatformDatabaseBackend"  # django-db, retrying
    assert app.conf.result_extended and app.conf.result_expires and app.conf.result_backend_always_retry


def test_every_seeded_schedule_names_a_registered_task_with_json_arguments_that_bind():
    app.loader.import_default_modules()
    for default in default_schedules():
        assert default.task in app.tasks, f"schedule {default.name!r} names unknown task {default.task!r}"
        kwargs = json.loads(json.dumps(default.kwargs))
        assert kwargs == default.kwargs
        inspect.signature(app.tasks[default.task].run).bind(**kwargs)


@pytest.mark.django_db(transaction=True)
def test_running_broker_has_direct_exchanges_and_quorum_queues_with_dead_letters(cpu_worker, io_worker, broker_url):
    vhost = broker_url.rsplit("/", 1)[1]
    exchanges = dict(rabbit.list_table(vhost, "exchanges", "name", "type"))
    for lane in topology.LANES:
        assert exchanges[lane.name] == "direct", lane.name
    assert exchanges[topology.DEAD_LETTER_EXCHANGE] == "direct"
    assert exchanges[topology.DELAY_DELIVERY_EXCHANGE] == "topic"

    queues = {row[0]: row[1:] for row in rabbit.list_table(vhost, "queues", "name", "type", "durable", "arguments")}
    for lane in topology.LANES:
        qtype, durable, arguments = queues[lane.name]
        assert (qtype, durable) == ("quorum", "true"), lane.name
        assert f'{{"x-delivery-limit",{lane.delivery_limit}}}' in arguments
        assert '{"x-dead-letter-exchange","dead_letter"}' in arguments
        assert f'{{"x-max-length",{lane.max_length}}}' in arguments and '{"x-overflow","reject-publish"}' in arguments
        assert queues[topology.dead_letter_queue_name(lane.name)][0] == "quorum"

    bindings = rabbit.list_table(vhost, "bindings", "source_name", "destination_name", "routing_key")
    for lane in topology.LANES:
        assert [lane.name, lane.name, lane.name] in bindings  # direct exchange -> queue, key = queue name
        assert [topology.DELAY_DELIVERY_EXCHANGE, lane.name, f"#.{lane.name}"] in bindings
