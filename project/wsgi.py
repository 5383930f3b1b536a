"""WSGI entry point: Django's synchronous handler, for plain HTTP.

The web role serves it from project.asgi (a2wsgi's thread pool under uvicorn, beside the WebSocket
routes); a WSGI-only server can serve it directly (`gunicorn project.wsgi:application`, no WebSockets).
"""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

application = get_wsgi_application()
