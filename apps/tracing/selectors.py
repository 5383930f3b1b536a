"""Reads: event lists with filters, and a trace as a tree with timings."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import QuerySet

from apps.tracing.models import TraceEvent


def events(trace_id: str = "", name: str = "", status: str = "", kind: str = "",
           since: datetime | None = None, until: datetime | None = None) -> QuerySet[TraceEvent]:
    queryset = TraceEvent.objects.all()
    if trace_id:
        queryset = queryset.filter(trace_id=trace_id.lower())
    if name:
        queryset = queryset.filter(name__icontains=name)
    if status:
        queryset = queryset.filter(status=status)
    if kind:
        queryset = queryset.filter(kind=kind)
    if since:
        queryset = queryset.filter(start_time__gte=since)
    if until:
        queryset = queryset.filter(start_time__lt=until)
    return queryset.order_by("-start_time")


@dataclass
class Node:
    event: TraceEvent
    depth: int = 0
    children: list["Node"] = field(default_factory=list)
    offset_pct: float = 0.0  # where the bar starts, as a share of the whole trace
    width_pct: float = 0.0
    offset_ms: float = 0.0  # from the start of the trace

    def as_dict(self) -> dict:
        event = self.event
        return {
            "span_id": event.span_id, "parent_span_id": event.parent_span_id, "name": event.name,
            "kind": event.kind, "status": event.status, "status_message": event.status_message,
            "service": event.service, "start_time": event.start_time.isoformat(),
            "offset_ms": round(self.offset_ms, 3), "duration_ms": round(event.duration_ms, 3),
            "attributes": event.attributes, "events": event.events, "issues": event.issues,
            "export_status": event.export_status,
            "children": [child.as_dict() for child in self.children],
        }


@dataclass
class Trace:
    trace_id: str
    roots: list[Node]
    start_ns: int
    duration_ms: float
    span_count: int

    def flat(self) -> list[Node]:
        """Depth-first, children in start order: the rows of the trace view."""
        out: list[Node] = []

        def walk(node: Node):
            out.append(node)
            for child in node.children:
                walk(child)

        for root in self.roots:
            walk(root)
        return out

    def as_dict(self) -> dict:
        return {"trace_id": self.trace_id, "span_count": self.span_count, "duration_ms": round(self.duration_ms, 3),
                "spans": [root.as_dict() for root in self.roots]}


def trace_tree(trace_id: str) -> Trace | None:
    rows = list(TraceEvent.objects.filter(trace_id=trace_id.lower()).order_by("start_ns", "id"))
    if not rows:
        return None
    start = min(row.start_ns for row in rows)
    end = max(row.end_ns for row in rows)
    total = max(end - start, 1)
    nodes = {row.span_id: Node(row) for row in rows}
    roots: list[Node] = []
    for node in nodes.values():
        node.offset_ms = (node.event.start_ns - start) / 1e6
        node.offset_pct = round(100 * (node.event.start_ns - start) / total, 3)
        node.width_pct = round(max(100 * (node.event.end_ns - node.event.start_ns) / total, 0.3), 3)
        parent = nodes.get(node.event.parent_span_id)
        # A span whose parent was not recorded here (another service, or dropped) is shown as a root.
        (parent.children if parent is not None and parent is not node else roots).append(node)

    def set_depth(node: Node, depth: int):
        node.depth = depth
        for child in node.children:
            set_depth(child, depth + 1)

    for root in roots:
        set_depth(root, 0)
    return Trace(trace_id.lower(), roots, start, (end - start) / 1e6, len(rows))
