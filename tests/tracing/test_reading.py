"""Reading traces: admin list with filters, the admin trace view, the HTTP API and `manage.py trace_show`."""
import io
import time
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.tracing import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def trace_id():
    trace_id = uuid.uuid4().hex
    now = time.time_ns()

    def rec(span_id, parent, name, offset_ms, duration_ms, **extra):
        start = now + int(offset_ms * 1e6)
        return {"trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "name": name,
                "start_ns": start, "end_ns": start + int(duration_ms * 1e6), **extra}

    services.ingest_batch([
        rec("1" * 16, "", "http GET /orders", 0, 100, kind="request", status="ok"),
        rec("2" * 16, "1" * 16, "run/orders.export", 10, 60, kind="task", status="error", status_message="disk full"),
        rec("3" * 16, "2" * 16, "orders.write", 20, 30, attributes={"rows": 12}),
        rec("4" * 16, "1" * 16, "order.delete", 90, 0, kind="audit", attributes={"audit.actor": "user:1"}),
    ], "fixture")
    services.ingest_batch([{"trace_id": uuid.uuid4().hex, "span_id": "5" * 16, "name": "unrelated", "start_ns": now}], "x")
    return trace_id


@pytest.fixture
def admin_client(client):
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    return client


def test_admin_list_filters_by_trace_name_status_and_time(admin_client, trace_id):
    url = reverse("admin:tracing_traceevent_changelist")
    page = admin_client.get(url, {"trace_id": trace_id}).content.decode()
    assert "orders.write" in page and "unrelated" not in page
    page = admin_client.get(url, {"name": "orders."}).content.decode()
    assert "run/orders.export" in page and "http GET /orders" not in page
    page = admin_client.get(url, {"status": "error"}).content.decode()
    assert "run/orders.export" in page and "orders.write" not in page
    page = admin_client.get(url, {"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"}).content.decode()
    assert "orders.write" not in page
    page = admin_client.get(url, {"since": "2000-01-01T00:00:00Z"}).content.decode()
    assert "orders.write" in page


def test_admin_trace_view_shows_the_span_tree_with_timing_bars(admin_client, trace_id):
    response = admin_client.get(reverse("admin:tracing_trace", args=[trace_id]))
    page = response.content.decode()
    assert response.status_code == 200
    positions = [page.index(name) for name in ("http GET /orders", "run/orders.export", "orders.write", "order.delete")]
    assert positions == sorted(positions)  # depth-first: the child right under its parent
    assert "padding-left: 3em" in page  # orders.write is two levels deep
    assert "width: 100.0%" in page or "width: 100%" in page  # the root spans the whole trace
    assert "disk full" in page and "cdn" not in page.lower()
    assert admin_client.get(reverse("admin:tracing_trace", args=["f" * 32])).status_code == 404


def test_api_returns_the_trace_tree_and_filtered_events(admin_client, trace_id):
    tree = admin_client.get(f"/api/v1/tracing/traces/{trace_id}/").json()
    assert tree["span_count"] == 4 and 99 < tree["duration_ms"] < 101
    (root,) = tree["spans"]
    assert [c["name"] for c in root["children"]] == ["run/orders.export", "order.delete"]
    assert root["children"][0]["children"][0]["attributes"] == {"rows": 12}
    events = admin_client.get("/api/v1/tracing/events/", {"trace_id": trace_id, "status": "error"}).json()["results"]
    assert [e["name"] for e in events] == ["run/orders.export"]


@pytest.mark.parametrize("url, message", [
    ("/api/v1/tracing/traces/not-hex/", "trace_id must be 32 hex digits"),
    ("/api/v1/tracing/events/?status=bad", "status must be one of"),
    ("/api/v1/tracing/events/?since=yesterday", "since must be an ISO 8601 date-time"),
    ("/api/v1/tracing/events/?limit=0", "limit must be between 1 and 500"),
])
def test_api_bad_input_gets_a_json_error_that_says_what_was_wrong(admin_client, url, message):
    response = admin_client.get(url)
    assert response.status_code == 400
    assert message in response.json()["detail"] and response.json()["code"] == "invalid"  # the API's one shape


def test_api_unknown_trace_is_a_404_in_the_api_error_shape(admin_client):
    response = admin_client.get(f"/api/v1/tracing/traces/{'ab' * 16}/")
    assert response.status_code == 404
    assert response.json() == {"detail": f"no events recorded for trace {'ab' * 16}", "code": "not_found"}


def test_api_requires_authentication(client, trace_id):
    assert client.get(f"/api/v1/tracing/traces/{trace_id}/").status_code in (401, 403)


def test_trace_show_prints_the_tree_with_timings(trace_id):
    out = io.StringIO()
    call_command("trace_show", trace_id, "--attributes", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"trace {trace_id}: 4 spans, 100.00 ms")
    assert "  run/orders.export [task]  ERROR disk full" in lines[2]
    assert "    orders.write [operation]" in lines[3] and "30.00 ms" in lines[3]
    assert '{"rows": 12}' in lines[4]
    with pytest.raises(CommandError, match="TRACE_ID must be 32 hex digits"):
        call_command("trace_show", "xyz")
    with pytest.raises(CommandError, match="no events recorded"):
        call_command("trace_show", "e" * 32)
