"""Reads whose SQL Django compiles once per process: the API's hot detail reads (issue 19).

Django compiles a queryset to SQL on every evaluation. For the task detail read that was most of the read's
CPU: 0.72 ms through the ORM against 0.28 ms for the same SQL run through ``Model.objects.raw`` (PostgreSQL,
2,000 reads each, in process; docs/benchmarks.md). A ``PreparedRead`` builds its queryset once with
placeholder values, keeps the SQL Django made for it, and runs that SQL with each call's values: model
instances as the ORM makes them (``raw`` applies the fields' converters), annotations as attributes.

The queryset is still written with the ORM, so the SQL stays Django's; a placeholder that does not come out
as exactly one parameter (a lookup that transforms its value, as ``contains`` does) fails on first use.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable

from django.core.exceptions import ImproperlyConfigured
from django.db import router
from django.db.models import Model, QuerySet

_serial = itertools.count(1)


def _placeholder(kind: type):
    """A value of ``kind`` no caller passes, unique to this placeholder."""
    number = next(_serial)
    if kind is int:
        return -(2 ** 62) + number
    if kind is str:
        return f"\x00placeholder-{number}"
    raise ImproperlyConfigured(f"PreparedRead placeholders are int or str, not {kind.__name__}")


class PreparedRead:
    """``PreparedRead(Model, build, task_id=str)``: ``build(task_id=...)`` returns the queryset of ``Model``;
    ``first(task_id=v)`` returns its first row for ``v`` (or None) without compiling it again."""

    def __init__(self, model: type[Model], build: Callable[..., QuerySet], **kinds: type):
        self.model, self.build, self.kinds = model, build, kinds
        self._compiled: dict[str, tuple[str, list, dict[int, str]]] = {}  # per database alias

    def _compile(self, alias: str):
        placeholders = {name: _placeholder(kind) for name, kind in self.kinds.items()}
        queryset = self.build(**placeholders).using(alias)
        if queryset.model is not self.model:
            raise ImproperlyConfigured(f"PreparedRead of {self.model.__name__} built a {queryset.model.__name__} query")
        sql, params = queryset.query.sql_with_params()
        by_value = {value: name for name, value in placeholders.items()}
        slots = {i: by_value[p] for i, p in enumerate(params) if isinstance(p, (int, str)) and p in by_value}
        if sorted(slots.values()) != sorted(placeholders):
            raise ImproperlyConfigured(
                f"PreparedRead: each of {sorted(placeholders)} must be one parameter of the query as it is; "
                f"found {sorted(slots.values())} in {sql!r}")
        compiled = (sql, list(params), slots)
        self._compiled[alias] = compiled
        return compiled

    def first(self, **values):
        if values.keys() != self.kinds.keys():
            raise TypeError(f"PreparedRead.first takes {sorted(self.kinds)}, got {sorted(values)}")
        alias = router.db_for_read(self.model)
        sql, params, slots = self._compiled.get(alias) or self._compile(alias)
        bound = [values[slots[i]] if i in slots else p for i, p in enumerate(params)]
        return next(iter(self.model.objects.db_manager(alias).raw(sql, bound)), None)
