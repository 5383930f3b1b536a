"""Round trips through the real broker and real workers: the right pool runs each lane's tasks."""
import pytest
from django_celery_results.models import TaskResult

from apps.core.tasks import probe as core_probe
from apps.datasets.tasks import probe as dataset_probe
from apps.mail.tasks import probe as mail_probe
from apps.tracing.tasks import probe as tracing_probe

pytestmark = pytest.mark.django_db(transaction=True)


def test_dataset_lane_runs_on_prefork(cpu_worker):
    result = dataset_probe.delay().get(timeout=30)
    assert result["pool"] == "prefork"
    assert result["queue"] == "dataset"
    assert result["hostname"] == cpu_worker.nodename
    assert result["pid"] in cpu_worker.children()  # a prefork child ran it, not the main process


@pytest.mark.parametrize("task, queue", [(mail_probe, "mail"), (tracing_probe, "ops_trace"), (core_probe, "ops_trace")])
def test_io_lanes_run_on_eventlet(io_worker, task, queue):
    result = task.delay().get(timeout=30)
    assert result == {"hostname": io_worker.nodename, "queue": queue, "pool": "eventlet", "pid": io_worker.pid}


def test_result_is_stored_in_the_database_with_extended_fields(cpu_worker):
    async_result = dataset_probe.delay()
    async_result.get(timeout=30)
    row = TaskResult.objects.get(task_id=async_result.id)
    assert row.status == "SUCCESS"
    assert row.task_name == "datasets.probe"
    assert row.worker == cpu_worker.nodename
    assert '"pool": "prefork"' in row.result


def test_json_arguments_survive_the_round_trip(io_worker):
    from tests.support.tasks import io_echo

    value = {"text": "é ü 漢字", "int": 2**53, "float": 1.5, "list": [1, None, True], "nested": {"k": ["v"]}}
    assert io_echo.delay(value).get(timeout=30)["value"] == value
