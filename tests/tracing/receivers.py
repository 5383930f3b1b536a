"""Real HTTP receivers started by the tests: an OTLP/HTTP traces endpoint and a Sentry envelope sink."""
from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.net import free_port


def _any_value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class _Server:
    handler_cls: type

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def start(self):
        owner = self

        class Handler(self.handler_cls):
            receiver = owner

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        """Down: the port refuses connections until start() again."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _OTLPHandler(BaseHTTPRequestHandler):
    receiver = None

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _any_value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({
                        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(), "name": span.name,
                        "kind": span.kind, "status_code": span.status.code, "status_message": span.status.message,
                        "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
                        "attributes": {a.key: _any_value(a.value) for a in span.attributes},
                        "events": [e.name for e in span.events],
                        "scope": scope_spans.scope.name, "service": resource.get("service.name"),
                    })
        with self.receiver._lock:
            self.receiver.requests += 1
            self.receiver.spans.extend(spans)
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class OTLPReceiver(_Server):
    """Decodes ExportTraceServiceRequest bodies (opentelemetry-proto) into plain dicts in ``spans``."""

    handler_cls = _OTLPHandler

    def __init__(self, port: int | None = None):
        super().__init__(port)
        self.spans: list[dict] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def named(self, name: str) -> list[dict]:
        with self._lock:
            return [span for span in self.spans if span["name"] == name]

    def in_trace(self, trace_id: str) -> list[dict]:
        with self._lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]


class _SentryHandler(BaseHTTPRequestHandler):
    receiver = None

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # only if sentry-sdk chose brotli, which needs the package installed

            body = brotli.decompress(body)
        items = []
        for line in body.splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                continue
        with self.receiver._lock:
            self.receiver.envelopes.append({"path": self.path, "items": items})
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class SentrySink(_Server):
    """Accepts Sentry envelopes (POST /api/<project>/envelope/) and keeps their JSON lines."""

    handler_cls = _SentryHandler

    def __init__(self, port: int | None = None):
        super().__init__(port)
        self.envelopes: list[dict] = []

    @property
    def dsn(self) -> str:
        return f"http://testkey@127.0.0.1:{self.port}/1"

    def exceptions(self) -> list[dict]:
        found = []
        with self._lock:
            for envelope in self.envelopes:
                for item in envelope["items"]:
                    for value in (item.get("exception") or {}).get("values", []) if isinstance(item, dict) else []:
                        found.append(value)
        return found
