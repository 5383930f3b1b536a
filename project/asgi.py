"""ASGI entry point for the web role (uvicorn project.asgi:application): HTTP -> Django, WebSocket -> live task events.

Plain HTTP goes to Django's WSGI handler on a pool of threads (a2wsgi), not to Django's ASGI handler. Under
the ASGI handler every sync view and middleware runs through ``sync_to_async(thread_sensitive=True)``: on
one thread per process, one request at a time, a database or publisher-confirm wait holding up every other
request, and each request opened a new database connection (measured: docs/benchmarks.md, "HTTP API under
load"). On the pool each thread keeps its own persistent connection (CONN_MAX_AGE, compose/start/web) and
requests wait for PostgreSQL and RabbitMQ side by side. ``PLATFORM_WEB_HTTP=asgi`` restores Django's ASGI
handler (kept for comparison: bench/http_load.py).
"""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

if os.environ.get("PLATFORM_WEB_HTTP", "wsgi") == "asgi":
    from django.core.asgi import get_asgi_application

    http_application = get_asgi_application()  # sets Django up before the WebSocket routes import models
else:
    from a2wsgi import WSGIMiddleware

    from project.wsgi import application as wsgi_application  # sets Django up

    # Threads per process: requests served at once, each with its own database connection.
    http_application = WSGIMiddleware(wsgi_application, workers=int(os.environ.get("WEB_THREADS", 16)))

from channels.routing import ProtocolTypeRouter  # noqa: E402

from apps.control.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter({"http": http_application, "websocket": websocket_application()})
