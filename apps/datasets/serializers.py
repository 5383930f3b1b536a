from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from apps.datasets import selectors
from apps.datasets.models import Dataset


class DatasetSerializer(serializers.ModelSerializer):
    progress = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    task = serializers.SerializerMethodField()
    profile_url = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = ["id", "name", "version", "status", "progress", "error", "task", "row_count", "column_count",
                  "source_path", "options", "created_at", "started_at", "finished_at", "profile_url"]

    def get_progress(self, obj) -> dict:
        return selectors.progress(obj)

    def get_error(self, obj) -> dict | None:
        return selectors.error(obj)

    def get_task(self, obj) -> dict:
        return selectors.task_state(obj)

    def get_profile_url(self, obj) -> str | None:
        request = self.context.get("request")
        if obj.status != "READY" or request is None:
            return None
        return request.build_absolute_uri(f"/api/v1/datasets/{obj.pk}/profile/")


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="CSV, TSV, JSON Lines or Parquet")
    name = serializers.CharField(required=False, max_length=200, help_text="default: the file name without extension")
    chunk_bytes = serializers.IntegerField(required=False, min_value=1024)
    encoding = serializers.CharField(required=False, max_length=50, help_text="default: detected")

    def validate_file(self, upload):
        if upload.size == 0:
            raise serializers.ValidationError("the uploaded file is empty (0 bytes)")
        if upload.size > settings.DATASETS_MAX_UPLOAD_BYTES:
            raise serializers.ValidationError(
                f"the file is {upload.size} bytes, over the limit of {settings.DATASETS_MAX_UPLOAD_BYTES} "
                "(DATASETS_MAX_UPLOAD_BYTES); import it from a path with manage.py dataset_import")
        return upload
