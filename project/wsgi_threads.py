"""Plain HTTP of the web role: Django's WSGI handler on a pool of threads, one hand-off per request.

a2wsgi (the general WSGI-in-ASGI adapter) crosses between the event loop and the thread four times per
request: the call, then a blocking ``run_coroutine_threadsafe`` for the response start, the body and its end.
Each crossing wakes the loop and trades the GIL; in process that added about 0.4 ms of CPU to a request
whose Django part costs 0.1 ms (docs/benchmarks.md, "HTTP API under load"). Here a request whose body has
arrived whole (every API call) goes to a thread once, with its body, and comes back once with Django's whole
response. What cannot be held in memory keeps streaming: a request body over ``INLINE_BODY_BYTES`` (dataset
uploads) goes through a2wsgi as before, and a streaming response (files, WhiteNoise's static files) is sent
chunk by chunk from the thread.
"""
from __future__ import annotations

import asyncio
import contextvars
import io
import logging
from concurrent.futures import ThreadPoolExecutor

from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi import build_environ

log = logging.getLogger(__name__)

INLINE_BODY_BYTES = 1024 * 1024  # bodies up to this are read before the hand-off; larger ones stream


def streaming_threads(threads: int) -> int:
    return max(2, threads // 4)


class WSGIOnThreads:
    """An ASGI app (HTTP only) serving a WSGI app on ``threads`` threads."""

    def __init__(self, app, threads: int):
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="http")
        # Large uploads on threads of their own (a quarter as many): they never hold up the API's threads.
        self.streaming = WSGIMiddleware(app, workers=streaming_threads(threads))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        chunks, size, more = [], 0, True
        while more and size <= INLINE_BODY_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
        if more:  # a large upload: stream the rest, after what was read here
            read = [{"type": "http.request", "body": b"".join(chunks), "more_body": True}]

            async def receive_rest():
                return read.pop() if read else await receive()

            return await self.streaming(scope, receive_rest, send)
        environ = build_environ(scope, io.BytesIO(b"".join(chunks)))
        loop = asyncio.get_running_loop()
        call = contextvars.copy_context().run  # each request starts from the loop's context, as a2wsgi does
        answer = await loop.run_in_executor(self.executor, call, self._respond, environ, loop, send)
        if answer is not None:
            status, headers, body = answer
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    def _respond(self, environ, loop, send):
        """In a pool thread: the whole response as (status, headers, body), or None once it has been streamed."""
        started = {}

        def start_response(status, headers, exc_info=None):
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [(name.lower().encode("latin1"), value.encode("latin1")) for name, value in headers]
            return _no_write

        try:
            iterable = self.app(environ, start_response)
        except Exception:  # Django answers its own errors; this is the handler itself failing
            log.exception("the WSGI application raised")
            return 500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
        try:
            if isinstance(iterable, (list, tuple)) or getattr(iterable, "streaming", None) is False:
                body = b"".join(iterable)  # in memory already: a list, or a Django response that is not streaming
                return started["status"], started["headers"], body
            self._stream(iterable, started, loop, send)
            return None
        finally:
            getattr(iterable, "close", lambda: None)()

    @staticmethod
    def _stream(iterable, started, loop, send) -> None:
        def sync_send(message):
            asyncio.run_coroutine_threadsafe(send(message), loop).result()

        def head():
            return {"type": "http.response.start", "status": started["status"], "headers": started["headers"]}

        head_sent = False  # a generator may call start_response only when its first chunk is asked for
        for chunk in iterable:
            if not head_sent:
                sync_send(head())
                head_sent = True
            if chunk:
                sync_send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not head_sent:
            sync_send(head())
        sync_send({"type": "http.response.body", "body": b""})


def _no_write(data: bytes) -> None:
    # PEP 3333's legacy write(): Django never calls it; refuse loudly rather than lose bytes.
    raise RuntimeError("write() is not supported; return an iterable")

