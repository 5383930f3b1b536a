"""ASGI entry point for the web role (uvicorn project.asgi:application): HTTP -> Django, WebSocket -> live task events.

Plain HTTP goes to Django's WSGI handler on a pool of threads (project/wsgi_threads.py: one hand-off per
request), not to Django's ASGI handler. Under the ASGI handler every sync view and middleware runs through
``sync_to_async(thread_sensitive=True)``: on one thread per process, one request at a time, a database or
publisher-confirm wait holding up every other request, and each request opened a new database connection
(measured: docs/benchmarks.md, "HTTP API under load"). On the pool each thread keeps its own persistent
connection (CONN_MAX_AGE, compose/start/web) and requests wait for PostgreSQL and RabbitMQ side by side.
``PLATFORM_WEB_HTTP`` picks another way, kept for comparison (bench/http_load.py): ``a2wsgi`` (the general
adapter: four loop/thread crossings per request) or ``asgi`` (Django's ASGI handler).
"""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

HTTP_WAYS = ("wsgi", "a2wsgi", "asgi")
way = os.environ.get("PLATFORM_WEB_HTTP", "wsgi")
if way not in HTTP_WAYS:
    raise SystemExit(f"PLATFORM_WEB_HTTP={way!r}: expected one of {', '.join(HTTP_WAYS)}")
# Requests served at once per process, each thread with its own database connection. 8: fewer threads served
# more requests/s on two cores (4 best; GIL and scheduling) but fewer requests can wait on RabbitMQ or a slow
# page at once (docs/benchmarks.md, "HTTP API under load": runs F and G).
threads = int(os.environ.get("WEB_THREADS", 8))
if way == "asgi":
    from django.core.asgi import get_asgi_application

    http_application = get_asgi_application()  # sets Django up before the WebSocket routes import models
elif way == "a2wsgi":
    from a2wsgi import WSGIMiddleware

    from project.wsgi import application as wsgi_application  # sets Django up

    http_application = WSGIMiddleware(wsgi_application, workers=threads)
else:
    from project.wsgi import application as wsgi_application  # sets Django up
    from project.wsgi_threads import WSGIOnThreads

    http_application = WSGIOnThreads(wsgi_application, threads=threads)

from channels.routing import ProtocolTypeRouter  # noqa: E402

from apps.control.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter({"http": http_application, "websocket": websocket_application()})
