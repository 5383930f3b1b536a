"""Test-only tasks for the tracing tests (ops_trace: tests.io.*, dataset: tests.cpu.*)."""
from __future__ import annotations

from celery import shared_task

from apps.tracing import api as tracing


@shared_task(name="tests.io.trace_chain")
def trace_chain(depth: int, cpu_leaf: bool = False) -> str:
    """A chain of sub-tasks: each step records an operation span and enqueues the next from inside it."""
    with tracing.span("chain.step", depth=depth):
        tracing.audit("chain.visit", actor="test", target=f"step:{depth}")
        if depth > 0:
            trace_chain.delay(depth - 1, cpu_leaf)
        elif cpu_leaf:
            trace_cpu_leaf.delay()
    return tracing.current_trace_id()


@shared_task(name="tests.cpu.trace_leaf")
def trace_cpu_leaf() -> str:
    with tracing.span("cpu.leaf"):
        return tracing.current_trace_id()


@shared_task(name="tests.io.trace_fail")
def trace_fail(message: str) -> None:
    raise ValueError(message)


@shared_task(name="tests.io.trace_retry_once", bind=True, max_retries=2)
def trace_retry_once(self) -> int:
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("first attempt fails"), countdown=0)
    return self.request.retries
