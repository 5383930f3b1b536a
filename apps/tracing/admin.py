"""Admin: the event list with filters (trace id, name, status, kind, time range) and a trace view."""
from __future__ import annotations

from django.contrib import admin
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html

from apps.tracing import selectors
from apps.tracing.models import RejectedEvent, TraceEvent


class InputFilter(admin.SimpleListFilter):
    """A list filter with a text box instead of choices."""

    template = "admin/tracing/input_filter.html"

    def lookups(self, request, model_admin):
        return ((None, None),)  # a filter without choices is not shown; this one always is

    def choices(self, changelist):
        query = changelist.get_query_string(remove=[self.parameter_name])
        yield {"query_string": query, "value": self.value() or "", "parameter_name": self.parameter_name,
               "other_params": [(k, v) for k, v in changelist.get_filters_params().items() if k != self.parameter_name]}


class TraceIdFilter(InputFilter):
    title = "trace id"
    parameter_name = "trace_id"

    def queryset(self, request, queryset):
        return queryset.filter(trace_id=self.value().strip().lower()) if self.value() else queryset


class NameFilter(InputFilter):
    title = "name contains"
    parameter_name = "name"

    def queryset(self, request, queryset):
        return queryset.filter(name__icontains=self.value()) if self.value() else queryset


class SinceFilter(InputFilter):
    title = "started at or after (ISO 8601)"
    parameter_name = "since"

    def queryset(self, request, queryset):
        value = parse_datetime(self.value() or "")
        return queryset.filter(start_time__gte=value) if value else queryset


class UntilFilter(InputFilter):
    title = "started before (ISO 8601)"
    parameter_name = "until"

    def queryset(self, request, queryset):
        value = parse_datetime(self.value() or "")
        return queryset.filter(start_time__lt=value) if value else queryset


@admin.register(TraceEvent)
class TraceEventAdmin(admin.ModelAdmin):
    list_display = ("start_time", "name", "kind", "status", "duration", "service", "trace_link", "export_status")
    list_filter = (TraceIdFilter, NameFilter, "status", "kind", SinceFilter, UntilFilter, "export_status",
                   ("start_time", admin.DateFieldListFilter))
    list_per_page = 100
    show_full_result_count = False  # COUNT(*) over millions of rows on every page view is not worth it
    readonly_fields = [field.name for field in TraceEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="duration", ordering="end_ns")
    def duration(self, obj):
        return f"{obj.duration_ms:.2f} ms"

    @admin.display(description="trace")
    def trace_link(self, obj):
        return format_html('<a href="{}" title="{}">{}…</a>', reverse("admin:tracing_trace", args=[obj.trace_id]),
                           obj.trace_id, obj.trace_id[:12])

    def get_urls(self):
        return [path("trace/<str:trace_id>/", self.admin_site.admin_view(self.trace_view), name="tracing_trace"),
                *super().get_urls()]

    def trace_view(self, request, trace_id: str):
        trace = selectors.trace_tree(trace_id)
        if trace is None:
            raise Http404(f"no events recorded for trace {trace_id}")
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "trace": trace,
                   "rows": trace.flat(), "title": f"Trace {trace.trace_id}"}
        return TemplateResponse(request, "admin/tracing/trace.html", context)


@admin.register(RejectedEvent)
class RejectedEventAdmin(admin.ModelAdmin):
    list_display = ("received_at", "batch_id", "position", "reason")
    search_fields = ("batch_id", "reason")
    readonly_fields = ("batch_id", "position", "reason", "payload", "received_at")

    def has_add_permission(self, request):
        return False
