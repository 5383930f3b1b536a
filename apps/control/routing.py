"""WebSocket routes and their authentication (token in the query string, else the session)."""
from __future__ import annotations

from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from django.urls import path

from apps.control.console.consumer import ConsoleConsumer
from apps.control.consumers import TaskProgressConsumer, UserTasksConsumer

websocket_urlpatterns = [
    path("ws/v1/console/", ConsoleConsumer.as_asgi()),
    path("ws/v1/tasks/", UserTasksConsumer.as_asgi()),
    path("ws/v1/tasks/<str:task_id>/", TaskProgressConsumer.as_asgi()),
]


@database_sync_to_async
def _user_for_token(key: str):
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    return token.user if token and token.user.is_active else None


class TokenAuthMiddleware:
    """``?token=<key>`` authenticates the socket (browsers cannot set headers on a WebSocket)."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        key = parse_qs(scope.get("query_string", b"").decode()).get("token", [None])[0]
        if key:
            from django.contrib.auth.models import AnonymousUser

            scope = {**scope, "user": await _user_for_token(key) or AnonymousUser()}
        return await self.inner(scope, receive, send)


class _KeepTokenUser:
    """Session auth fills scope['user'] only when the token did not. Cookie-authenticated sockets must
    come from an allowed origin (cross-site WebSocket hijacking); token sockets carry no ambient credential."""

    def __init__(self, inner):
        from channels.security.websocket import AllowedHostsOriginValidator

        self.session_stack = AllowedHostsOriginValidator(AuthMiddlewareStack(inner))
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if "user" in scope:
            return await self.inner(scope, receive, send)
        return await self.session_stack(scope, receive, send)


def websocket_application():
    from channels.routing import URLRouter

    return TokenAuthMiddleware(_KeepTokenUser(URLRouter(websocket_urlpatterns)))
