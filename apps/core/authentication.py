"""API token authentication with the token's user kept in process memory for a few seconds.

DRF's TokenAuthentication reads the token and its user from the database on every request: in the
profile of a detail GET it was one of the two queries and about a third of the CPU (docs/benchmarks.md).
Here a successful lookup is kept for ``API_TOKEN_CACHE_SECONDS`` (default 5). What that changes:
a token deleted (``api_token --rotate``) or a user deactivated or edited in another process keeps working
there for at most that long; in this process the signals below forget it at once. 0 turns the cache off.
"""
from __future__ import annotations

import threading
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

MAX_ENTRIES = 10_000  # a bound on memory: past it the cache starts again empty

_cache: dict[str, tuple[float, object, object]] = {}  # key -> (expires at, user, token)
_lock = threading.Lock()


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key):
        ttl = getattr(settings, "API_TOKEN_CACHE_SECONDS", 5)
        now = time.monotonic()
        hit = _cache.get(key)
        if ttl > 0 and hit is not None and hit[0] > now:
            return hit[1], hit[2]
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed: never cached
        if ttl > 0:
            with _lock:
                if len(_cache) >= MAX_ENTRIES:
                    _cache.clear()
                _cache[key] = (now + ttl, user, token)
        return user, token


def forget_all(**kwargs) -> None:
    """A token or a user changed in this process: drop every cached lookup (cheap; changes are rare)."""
    with _lock:
        _cache.clear()


for _model in (Token, get_user_model()):
    post_save.connect(forget_all, sender=_model, dispatch_uid=f"token-cache-{_model.__name__}-save")
    post_delete.connect(forget_all, sender=_model, dispatch_uid=f"token-cache-{_model.__name__}-delete")
