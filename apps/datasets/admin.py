"""Admin: import a file (path or upload), watch progress, cancel, re-import, read the profile with charts."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from apps.datasets import charts, selectors, services
from apps.datasets.models import Dataset


class ImportForm(forms.Form):
    path = forms.CharField(required=False, help_text="a file on the server (CSV, TSV, JSON Lines, Parquet)")
    upload = forms.FileField(required=False, help_text="or upload a file")
    name = forms.CharField(required=False, max_length=200, help_text="default: the file name; same name = new version")
    chunk_bytes = forms.IntegerField(required=False, min_value=1024, help_text="default: DATASETS_CHUNK_BYTES")

    def clean(self):
        data = super().clean()
        if bool(data.get("path")) == bool(data.get("upload")):
            raise forms.ValidationError("give either a server path or an upload (one of them)")
        return data


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "status", "stage", "progress", "row_count", "column_count", "created_at"]
    list_filter = ["status"]
    search_fields = ["name", "source_path"]
    actions = ["cancel_imports", "reimport"]
    change_form_template = "admin/datasets/dataset/change_form.html"
    # Shown read-only; the profile, plan and chunk ids are rendered below the fields, not as raw JSON.
    fields = readonly_fields = ["name", "version", "source_path", "options", "status", "stage", "rows_processed",
                                "rows_total", "chunks_done", "chunks_total", "row_count", "column_count", "error",
                                "error_row", "error_column", "task_id", "created_at", "started_at", "finished_at"]

    @admin.display(description="progress")
    def progress(self, obj):
        percent = obj.progress_percent
        return format_html("{} {}", charts.progress_bar_svg(percent), f"{percent}%" if percent is not None else "")

    def get_urls(self):
        return [path("import/", self.admin_site.admin_view(self.import_view), name="datasets_dataset_import"),
                *super().get_urls()]

    def add_view(self, request, form_url="", extra_context=None):
        return HttpResponseRedirect(reverse("admin:datasets_dataset_import"))

    def import_view(self, request):
        form = ImportForm(request.POST, request.FILES) if request.method == "POST" else ImportForm()
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            options = {"chunk_bytes": data["chunk_bytes"]} if data.get("chunk_bytes") else None
            if data.get("upload"):
                dataset = services.register_upload(data["upload"], name=data.get("name") or None, options=options)
            else:
                dataset = services.register_dataset(data["path"], name=data.get("name") or None, options=options)
            self.message_user(request, f"{dataset} queued for import", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:datasets_dataset_change", args=[dataset.pk]))
        context = {**self.admin_site.each_context(request), "form": form, "title": "Import a dataset",
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/datasets/dataset/import.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        dataset = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if dataset is not None:
            extra.update(progress_info=selectors.progress(dataset), task_state=selectors.task_state(dataset),
                         error_info=selectors.error(dataset), columns=_columns_for_display(dataset),
                         profile=dataset.profile if dataset.status == "READY" else None, dataset=dataset)
        return super().change_view(request, object_id, form_url, extra)

    @admin.action(description="Cancel selected imports")
    def cancel_imports(self, request, queryset):
        cancelled = sum(services.cancel_dataset(d.pk) for d in queryset)
        self.message_user(request, f"cancelled {cancelled} import(s)")

    @admin.action(description="Re-import selected (new version)")
    def reimport(self, request, queryset):
        for dataset in queryset:
            services.reimport(dataset)
        self.message_user(request, f"queued {queryset.count()} new version(s)")


def _columns_for_display(dataset: Dataset) -> list[dict]:
    if dataset.status != "READY" or not dataset.profile:
        return []
    shown = []
    for column in dataset.profile["columns"]:
        shown.append({
            **column,
            "null_bar": charts.null_bar_svg(column.get("null_fraction", 0)),
            "histogram_svg": charts.histogram_svg(column.get("histogram")),
            "top_svg": charts.top_values_svg(column.get("top_values")),
        })
    return shown
