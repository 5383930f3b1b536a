"""What the API request path does per call: serializer fields built once per class, the token lookup kept
for a few seconds (and forgotten at once when the token or its user changes here), one query for a task."""
import pytest
from django.contrib.auth import get_user_model
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.control.models import TaskRecord
from apps.control.serializers import TaskSerializer
from apps.core import authentication
from apps.mail.models import Message
from apps.mail.serializers import MessageOut

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_token_cache():
    authentication.forget_all()
    yield
    authentication.forget_all()


@pytest.fixture
def staff_client():
    user = get_user_model().objects.create_user("ops", password="x", is_staff=True)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.user = user
    return client


def test_output_serializers_build_their_fields_once_and_say_the_same_as_drf(monkeypatch):
    message = Message.objects.create(idempotency_key="k", from_email="a@example.com", to=["b@example.com"],
                                     subject="s", body_text="b", task_id="t")

    class PlainMessageOut(serializers.ModelSerializer):
        class Meta(MessageOut.Meta):
            pass

    assert MessageOut(message).data == PlainMessageOut(message).data
    built = []
    original = serializers.ModelSerializer.get_fields
    monkeypatch.setattr(serializers.ModelSerializer, "get_fields", lambda self: built.append(1) or original(self))
    monkeypatch.delattr(TaskSerializer, "_built_fields", raising=False)
    first, second = TaskSerializer(), TaskSerializer()
    assert first.fields["owner"] is not second.fields["owner"]  # each instance binds its own copies
    assert first.fields["owner"].parent is first and second.fields["owner"].parent is second
    TaskSerializer().data  # noqa: B018
    assert len(built) == 1


def test_a_task_detail_is_one_query_and_a_repeated_token_needs_none(staff_client, django_assert_num_queries):
    TaskRecord.objects.create(task_id="t-1", name="x", owner=staff_client.user)
    with django_assert_num_queries(2):  # the token (first time), the task with its owner
        assert staff_client.get("/api/v1/tasks/t-1/").json()["owner"] == "ops"
    with django_assert_num_queries(1):
        assert staff_client.get("/api/v1/tasks/t-1/").status_code == 200


def test_a_rotated_token_or_a_deactivated_user_stops_at_once_in_this_process(staff_client):
    assert staff_client.get("/api/v1/tasks/").status_code == 200  # cached now
    staff_client.user.is_active = False
    staff_client.user.save()
    assert staff_client.get("/api/v1/tasks/").status_code == 401
    staff_client.user.is_active = True
    staff_client.user.save()
    assert staff_client.get("/api/v1/tasks/").status_code == 200
    Token.objects.filter(user=staff_client.user).delete()
    assert staff_client.get("/api/v1/tasks/").status_code == 401


def test_a_wrong_token_is_never_cached(staff_client):
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token nope")
    assert bad.get("/api/v1/tasks/").status_code == 401
    assert "nope" not in authentication._cache


def test_elsewhere_a_change_reaches_the_cache_within_its_ttl(staff_client, settings, monkeypatch):
    """Another process's change (simulated: an update that sends no signal) is seen once the entry expires."""
    settings.API_TOKEN_CACHE_SECONDS = 5
    now = [1000.0]
    monkeypatch.setattr(authentication.time, "monotonic", lambda: now[0])
    assert staff_client.get("/api/v1/tasks/").status_code == 200
    get_user_model().objects.filter(pk=staff_client.user.pk).update(is_active=False)  # no signal
    assert staff_client.get("/api/v1/tasks/").status_code == 200  # still cached
    now[0] += 5.1
    assert staff_client.get("/api/v1/tasks/").status_code == 401
