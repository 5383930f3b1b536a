"""The fast tier (`bin/test --fast`): the broker is out of reach on purpose.

A test the fast tier selects must not need RabbitMQ. Rather than trust that, the tier makes every way to the
broker fail at once with a message that says how to classify the test: the Celery app's broker points at a
port nothing listens on (connection refused, no waiting), and the helpers that make vhosts or start worker
processes refuse.
"""
from __future__ import annotations

import os

FAST_TIER = "PLATFORM_TEST_TIER"
# Port 1 (tcpmux): nothing listens there, so a connection is refused at once instead of timing out.
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"


class NeedsBroker(RuntimeError):
    pass


def enter_fast_tier() -> None:
    os.environ[FAST_TIER] = "fast"
    from project.celery import app

    app.conf.broker_url = UNREACHABLE_BROKER
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0


def forbid_in_fast_tier(what: str) -> None:
    if os.environ.get(FAST_TIER) == "fast":
        raise NeedsBroker(f"{what} needs RabbitMQ, which the fast tier (bin/test --fast) keeps out of reach: "
                          "add the test's file to NEEDS_BROKER in tests/conftest.py")
