"""Dead-letter headers are read defensively: RabbitMQ writes x-death as a list of tables with a numeric
count, but a publisher can send any header, and a hostile one must not stop the drain that stores it."""
from types import SimpleNamespace

import pytest

from apps.control import deadletters


def message(headers: dict) -> SimpleNamespace:
    return SimpleNamespace(headers={"task": "tests.cpu.echo", "id": "t1", **headers}, body=b"[[], {}, {}]",
                           properties={"content_type": "application/json", "content_encoding": "utf-8"})


@pytest.mark.parametrize("x_death", [5, "dead", [{"count": "many", "reason": "rejected"}], [{"count": -3}],
                                     [{"count": None}], [{"count": float("inf")}], [[1, 2]], []])
def test_a_malformed_x_death_header_is_stored_with_a_count_of_one(x_death):
    row = deadletters._row("dataset.dead", message({"x-death": x_death}), {"tests.cpu.echo"})
    assert row.death_count == 1
    assert row.task_id == "t1" and row.dead_letter_queue == "dataset.dead"


def test_rabbitmqs_own_count_is_kept():
    row = deadletters._row("dataset.dead", message({"x-death": [{"count": 4, "reason": "delivery_limit",
                                                                  "queue": "dataset"}]}), set())
    assert (row.death_count, row.reason, row.queue) == (4, "delivery_limit", "dataset")
