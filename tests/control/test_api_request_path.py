"""What the API request path does per call: output serializers built once per class and rendered as DRF would, the token lookup kept
for a few seconds (and forgotten at once when the token or its user changes here), one query for a task."""
from datetime import datetime, timezone

import pytest
from django.contrib.auth import get_user_model
from django.db import models
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.control.models import TaskRecord
from apps.control.serializers import TaskSerializer
from apps.core import authentication
from apps.core.serializers import OutputModelSerializer
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


def _every_output_serializer(cls=OutputModelSerializer):
    for sub in cls.__subclasses__():
        yield sub
        yield from _every_output_serializer(sub)


def _sample(model, variant: int):
    """An unsaved instance with a value of its type in every concrete field (variant 1: None where allowed)."""
    when = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=timezone.utc)
    instance = model()
    for field in model._meta.concrete_fields:
        if field.is_relation:
            continue
        if variant == 1 and field.null:
            value = None
        elif isinstance(field, models.DateTimeField):
            value = when
        elif isinstance(field, models.BooleanField):
            value = variant == 0
        elif isinstance(field, models.FloatField):
            value = 1.25 + variant
        elif isinstance(field, models.IntegerField):  # every integer kind, the primary key too
            value = 7 + variant
        elif isinstance(field, models.BinaryField):
            value = "body-é".encode() + bytes([0xFF, variant])
        elif isinstance(field, models.JSONField):
            value = {"a": [1, "é", None], "b": {"c": 2.5}} if variant == 0 else ["x"]
        elif field.choices:
            value = field.choices[variant % len(field.choices)][0]
        else:
            value = f"{field.name}-é-{variant}"
        setattr(instance, field.attname, value)
    return instance


@pytest.mark.parametrize("serializer_cls", sorted(_every_output_serializer(), key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_output_serializers_say_exactly_what_drf_says(serializer_cls):
    """The fast rendering plan against DRF's own Serializer.to_representation, over every field kind."""
    model = serializer_cls.Meta.model
    owner = get_user_model().objects.create_user("owner-é")
    for variant in (0, 1):
        instance = _sample(model, variant)
        if hasattr(instance, "owner_id"):
            instance.owner = owner if variant == 0 else None
        ours = serializer_cls(instance)
        drfs = serializers.ModelSerializer.to_representation(serializer_cls(instance), instance)
        assert ours.data == drfs
        assert [type(v) for v in ours.data.values()] == [type(v) for v in drfs.values()]
        assert list(ours.data) == list(drfs)  # the same order of keys


def test_fields_that_need_their_serializer_still_get_it():
    """A related field and a method that reads the context go through this instance, not the shared plan."""
    class WithContext(OutputModelSerializer):
        who = serializers.SerializerMethodField()

        class Meta:
            model = TaskRecord
            fields = ["task_id", "owner", "who", "sent_at"]

        def get_who(self, obj) -> str:
            return self.context["who"]

    user = get_user_model().objects.create_user("u")
    record = TaskRecord.objects.create(task_id="t-ctx", name="x", owner=user)
    assert WithContext(record, context={"who": "first"}).data == {
        "task_id": "t-ctx", "owner": user.pk, "who": "first", "sent_at": None}
    assert WithContext(record, context={"who": "second"}).data["who"] == "second"


def test_output_serializers_build_their_fields_once(monkeypatch):
    built = []
    original = serializers.ModelSerializer.get_fields
    monkeypatch.setattr(serializers.ModelSerializer, "get_fields", lambda self: built.append(1) or original(self))
    monkeypatch.delattr(TaskSerializer, "_built_fields", raising=False)
    first, second = TaskSerializer(), TaskSerializer()
    assert first.fields["owner"] is not second.fields["owner"]  # each instance binds its own copies
    assert first.fields["owner"].parent is first and second.fields["owner"].parent is second
    TaskSerializer().data  # noqa: B018
    assert len(built) == 1
    message = Message(idempotency_key="k", from_email="a@example.com", to=["b@example.com"], subject="s")
    rendered = MessageOut(message)
    assert rendered.data["to"] == ["b@example.com"]
    assert "fields" not in rendered.__dict__  # plain model fields: rendered without binding a field


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


def test_the_compiled_task_read_answers_as_the_orm_does_for_staff_owners_and_others():
    """selectors.task_visible_to (SQL compiled once, apps/core/prepared.py) against the ORM read it replaced."""
    from django.utils import timezone as django_timezone

    from apps.control import selectors

    users = [get_user_model().objects.create_user(name, is_staff=(name == "staff")) for name in ("staff", "ann", "bob")]
    staff, ann, _ = users
    sent = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=timezone.utc)
    TaskRecord.objects.create(task_id="t-ann", name="x", owner=ann, sent_at=sent, progress_current=3, runtime=1.5)
    TaskRecord.objects.create(task_id="t-nobody", name="y", owner=None)
    for user in users:
        for task_id in ("t-ann", "t-nobody", "t-missing", "t-ann' OR '1'='1"):
            expected = selectors.tasks_visible_to(user).select_related("owner").filter(task_id=task_id).first()
            got = selectors.task_visible_to(user, task_id)
            if expected is None:
                assert got is None, (user.username, task_id)
                continue
            assert [getattr(got, f.attname) for f in TaskRecord._meta.concrete_fields] == \
                   [getattr(expected, f.attname) for f in TaskRecord._meta.concrete_fields]
            assert got.owner_username == (expected.owner.username if expected.owner else None)
            assert TaskSerializer(got).data == TaskSerializer(expected).data
    assert selectors.task_visible_to(ann, "t-ann").sent_at == sent and django_timezone.is_aware(sent)
    assert selectors.task_visible_to(staff, "t-nobody") is not None
    assert selectors.task_visible_to(ann, "t-nobody") is None  # not hers


def test_a_prepared_read_compiles_its_query_once_and_refuses_a_value_the_query_transforms():
    from django.core.exceptions import ImproperlyConfigured

    from apps.core.prepared import PreparedRead

    TaskRecord.objects.create(task_id="t-a", name="alpha")
    TaskRecord.objects.create(task_id="t-b", name="beta")
    builds = []

    def build(name):
        builds.append(name)
        return TaskRecord.objects.filter(name=name).order_by()

    read = PreparedRead(TaskRecord, build, name=str)
    assert [read.first(name=n).task_id for n in ("alpha", "beta", "alpha")] == ["t-a", "t-b", "t-a"]
    assert read.first(name="gamma") is None
    assert len(builds) == 1  # compiled once, with a placeholder
    with pytest.raises(TypeError, match="takes \\['name'\\], got \\['task_id'\\]"):
        read.first(task_id="t-a")
    contains = PreparedRead(TaskRecord, lambda name: TaskRecord.objects.filter(name__contains=name), name=str)
    with pytest.raises(ImproperlyConfigured, match="must be one parameter of the query as it is"):
        contains.first(name="alp")


def test_the_compiled_message_read_answers_as_the_orm_does():
    from apps.mail import selectors as mail_selectors

    stored = Message.objects.create(idempotency_key="k-read", to=["a@example.com"], subject="s", body_text="b",
                                    task_id="t-read", headers={"X-A": "1"})
    got, expected = mail_selectors.message_by_id(stored.pk), Message.objects.get(pk=stored.pk)
    assert [getattr(got, f.attname) for f in Message._meta.concrete_fields] == \
           [getattr(expected, f.attname) for f in Message._meta.concrete_fields]
    assert MessageOut(got).data == MessageOut(expected).data
    assert mail_selectors.message_by_id(stored.pk + 1000) is None
