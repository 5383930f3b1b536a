"""ASGI entry point for the web role (uvicorn project.asgi:application): HTTP -> Django, WebSocket -> live task events."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings.local")

django_application = get_asgi_application()  # sets Django up before the WebSocket routes import models

from channels.routing import ProtocolTypeRouter  # noqa: E402

from apps.control.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter({"http": django_application, "websocket": websocket_application()})
