"""The fast tier (bin/test --fast) keeps RabbitMQ out of reach, and its list of broker tests stays true."""
import ast
from pathlib import Path

import pytest

from tests.conftest import NEEDS_BROKER
from tests.support import rabbit, tier
from tests.support.workers import ProcessRole

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fast_tier(monkeypatch):
    monkeypatch.setenv(tier.FAST_TIER, "fast")


def test_in_the_fast_tier_a_vhost_or_a_worker_fails_at_once_naming_the_list(fast_tier):
    with pytest.raises(tier.NeedsBroker, match="rabbitmqctl add_vhost needs RabbitMQ.*NEEDS_BROKER"):
        rabbit.create_vhost()
    with pytest.raises(tier.NeedsBroker, match="compose/start/io needs RabbitMQ"):
        ProcessRole("io", tier.UNREACHABLE_BROKER, "sqlite:///unused").start()


def test_every_listed_broker_test_exists():
    """A renamed or moved test must not fall out of the list unnoticed (it would then fail in --fast)."""
    missing = []
    for entry in sorted(NEEDS_BROKER):
        path, _, name = entry.partition("::")
        file = ROOT / path
        if not file.is_file():
            missing.append(entry)
            continue
        if name:
            defined = {node.name for node in ast.walk(ast.parse(file.read_text()))
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
            if name.split("[", 1)[0] not in defined:
                missing.append(entry)
    assert not missing, f"NEEDS_BROKER in tests/conftest.py names tests that do not exist: {missing}"
