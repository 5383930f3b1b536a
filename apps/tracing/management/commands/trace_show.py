"""`manage.py trace_show TRACE_ID`: a trace's span tree with timings, in the terminal."""
from __future__ import annotations

import json
import re

from django.core.management.base import BaseCommand, CommandError

from apps.tracing import selectors


class Command(BaseCommand):
    help = "Show a trace as a tree of spans with start offsets and durations."

    def add_arguments(self, parser):
        parser.add_argument("trace_id", help="32 hex digits")
        parser.add_argument("--json", action="store_true", help="print the tree as JSON")
        parser.add_argument("--attributes", action="store_true", help="print each span's attributes")

    def handle(self, trace_id, **options):
        if not re.fullmatch(r"[0-9a-fA-F]{32}", trace_id):
            raise CommandError(f"TRACE_ID must be 32 hex digits, got {trace_id!r}")
        trace = selectors.trace_tree(trace_id)
        if trace is None:
            raise CommandError(f"no events recorded for trace {trace_id.lower()}")
        if options["json"]:
            self.stdout.write(json.dumps(trace.as_dict(), indent=2, default=str))
            return
        self.stdout.write(f"trace {trace.trace_id}: {trace.span_count} spans, {trace.duration_ms:.2f} ms")
        width = 30
        total = max(trace.duration_ms, 1e-9)
        for node in trace.flat():
            event = node.event
            start = int(width * node.offset_ms / total)
            length = max(1, int(width * event.duration_ms / total))
            bar = " " * start + "#" * min(length, width - start) if start < width else " " * (width - 1) + "#"
            label = f"{'  ' * node.depth}{event.name} [{event.kind}]"
            status = "" if event.status != "error" else f"  ERROR {event.status_message[:80]}"
            self.stdout.write(f"|{bar:<{width}}| +{node.offset_ms:9.2f} ms {event.duration_ms:9.2f} ms  {label}{status}")
            if options["attributes"] and event.attributes:
                self.stdout.write(f"{' ' * (width + 30)}{'  ' * node.depth}{json.dumps(event.attributes, default=str)}")
            for issue in event.issues:
                self.stdout.write(f"{' ' * (width + 30)}{'  ' * node.depth}! {issue}")
