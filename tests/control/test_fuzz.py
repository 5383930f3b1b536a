"""Schema-driven fuzzing (schemathesis) of the live OpenAPI schema against a real web process: no 5xx.

The web process gets a broker vhost of its own with no workers in it: the fuzzer learns worker names from
responses and really shuts workers down and pauses queues (seen), which must not hit the session's workers.
"""
import subprocess
import uuid
import sys
from pathlib import Path

import pytest

from tests.control.conftest import start_web
from tests.support import rabbit

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES = 8  # per operation: bounded so the suite stays minutes, not hours


@pytest.fixture
def isolated_web(worker_db_url):
    vhost = f"control-fuzz-{uuid.uuid4().hex[:8]}"
    rabbit.rabbitmqctl("add_vhost", vhost, timeout=300)  # slow while other suites churn quorum queues
    rabbit.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*", timeout=300)
    try:
        server = start_web(rabbit.vhost_url(vhost), worker_db_url)
        yield server
        server.process.stop()
    finally:
        rabbit.rabbitmqctl("delete_vhost", vhost, timeout=300)


def test_no_server_errors_anywhere_in_the_schema(isolated_web, staff, tmp_path):
    web = isolated_web
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis), "run", f"{web.url}/api/v1/schema/?format=json", "--url", web.url,
        "-H", f"Authorization: Token {staff.token}", "--checks", "not_a_server_error",
        "--max-examples", str(MAX_EXAMPLES), "--phases", "examples,coverage,fuzzing", "--seed", "20261121",
        "--request-timeout", "90", "--no-color",
        # /api/v1/health/ answers 503 on purpose while a role is missing (its contract for load balancers),
        # and this vhost has no workers at all.
        "--exclude-path", "/api/v1/health/",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)  # its cache stays out of the tree
    output = result.stdout + result.stderr
    (Path(web.process.log_path).parent / "schemathesis.log").write_text(output)
    assert result.returncode == 0, output[-6000:]
    assert "Server error" not in output, output[-6000:]
