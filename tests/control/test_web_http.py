"""Plain HTTP through the web role as compose/start/web runs it (uvicorn, project/wsgi_threads.py): API calls
in one hand-off, large bodies and file responses streamed, many requests at once; and the adapter's edges."""
import asyncio
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from apps.mail.models import Message
from project.wsgi_threads import INLINE_BODY_BYTES, WSGIOnThreads

ROOT = Path(__file__).resolve().parents[2]


def call(url: str, token: str | None = None, body: bytes | None = None, method: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


@pytest.mark.django_db(transaction=True)
def test_api_calls_small_and_large_bodies_and_many_at_once(web, staff):
    message = Message.objects.create(idempotency_key="web-http-1", from_email="a@example.com",
                                     to=["b@example.com"], subject="over http")
    url = f"{web.url}/api/v1/mail/messages/"

    status, body = call(f"{url}{message.pk}/", staff.token)
    assert status == 200 and json.loads(body)["subject"] == "over http"
    status, body = call(f"{url}999999999/", staff.token)
    assert status == 404 and "no message with id 999999999" in json.loads(body)["error"]

    # A body read whole before the hand-off, and one over INLINE_BODY_BYTES that streams: both reach the view
    # (refused for the bad address: nothing is stored or published).
    for size in (10, INLINE_BODY_BYTES + 500_000):
        bad = json.dumps({"to": ["not-an-address"], "subject": "s", "body": "x" * size}).encode()
        status, body = call(url, staff.token, bad)
        assert status == 400 and json.loads(body)["field"] == "to", (size, body[:300])
    # Over Django's DATA_UPLOAD_MAX_MEMORY_SIZE: a clear refusal, not a 500, and the server goes on.
    status, body = call(url, staff.token, json.dumps({"to": ["x@example.com"], "body": "x" * 3_000_000}).encode())
    assert 400 <= status < 500, (status, body[:300])
    assert Message.objects.count() == 1

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda _: call(f"{url}{message.pk}/", staff.token), range(200)))
    assert {status for status, _ in answers} == {200}
    assert {json.loads(body)["id"] for _, body in answers} == {message.pk}
    assert call(f"{web.url}/api/v1/mail/messages/{message.pk}/")[0] == 401  # no token: refused as before


def test_a_static_file_streams_whole(web):
    path = ROOT / "apps/control/static/control/console/task.js"
    status, body = call(f"{web.url}/static/control/console/task.js")
    assert status == 200 and body == path.read_bytes()
    status, body = call(f"{web.url}/static/control/console/task.js", method="HEAD")
    assert status == 200 and body == b""


# The adapter's edges, in process, with small WSGI apps of its own.

def serve(wsgi_app, body_chunks=(b"",), disconnect_first=False):
    sent = []

    async def run():
        messages = [{"type": "http.disconnect"}] if disconnect_first else [
            {"type": "http.request", "body": chunk, "more_body": i < len(body_chunks) - 1}
            for i, chunk in enumerate(body_chunks)]

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/x", "query_string": b"q=1",
                 "headers": [(b"content-type", b"text/plain")], "server": ("127.0.0.1", 80), "client": None}
        await WSGIOnThreads(wsgi_app, threads=2)(scope, receive, send)

    asyncio.run(run())
    return sent


def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("201 Created", [("X-Query", environ["QUERY_STRING"])])
    return [b"got ", str(len(body)).encode()]


def test_one_hand_off_answers_with_the_whole_response():
    sent = serve(echo, [b"ab", b"cd"])
    assert sent == [{"type": "http.response.start", "status": 201, "headers": [(b"x-query", b"q=1")]},
                    {"type": "http.response.body", "body": b"got 4"}]


def test_a_large_body_streams_through_in_order():
    chunks = [b"a" * 700_000, b"b" * 700_000, b"c" * 10]

    def digest(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [f"{len(body)} {body == b''.join(chunks)}".encode()]

    sent = serve(digest, chunks)
    assert b"".join(m.get("body", b"") for m in sent) == b"1400010 True"


def test_a_streaming_response_goes_chunk_by_chunk_and_is_closed():
    closed = []

    class Stream:
        streaming = True

        def __iter__(self):
            yield b"one"
            yield b""
            yield b"two"

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Stream()

    sent = serve(app)
    assert [m.get("body") for m in sent] == [None, b"one", b"two", b""] and closed == [True]


def test_a_failing_app_is_a_500_and_a_disconnect_before_the_body_calls_nothing():
    def broken(environ, start_response):
        raise RuntimeError("boom")

    assert serve(broken)[0]["status"] == 500
    called = []
    assert serve(lambda e, s: called.append(1), disconnect_first=True) == [] and called == []
