"""HTTP API: upload a file, follow its progress, read the profile, cancel."""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.datasets import services
from apps.datasets.models import Dataset, Status
from apps.datasets.serializers import DatasetSerializer, UploadSerializer


class DatasetListView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(responses=DatasetSerializer(many=True))
    def get(self, request):
        datasets = Dataset.objects.all()[:200]
        return Response(DatasetSerializer(datasets, many=True, context={"request": request}).data)

    @extend_schema(request=UploadSerializer, responses={202: DatasetSerializer})
    def post(self, request):
        upload = UploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        options = {key: data[key] for key in ("chunk_bytes", "encoding") if key in data}
        dataset = services.register_upload(data["file"], name=data.get("name"), options=options)
        return Response(DatasetSerializer(dataset, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)


class DatasetDetailView(APIView):
    @extend_schema(responses=DatasetSerializer)
    def get(self, request, pk: int):
        dataset = get_object_or_404(Dataset, pk=pk)
        return Response(DatasetSerializer(dataset, context={"request": request}).data)


class DatasetProfileView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, 409: OpenApiTypes.OBJECT})
    def get(self, request, pk: int):
        dataset = get_object_or_404(Dataset, pk=pk)
        if dataset.status != Status.READY:
            return Response({"detail": f"dataset {pk} is {dataset.status}: a profile exists only once it is READY",
                             "status": dataset.status, "error": dataset.error or None},
                            status=status.HTTP_409_CONFLICT)
        return Response({"id": dataset.pk, "name": dataset.name, "version": dataset.version, "profile": dataset.profile})


class DatasetCancelView(APIView):
    @extend_schema(request=None, responses={200: DatasetSerializer, 409: OpenApiTypes.OBJECT})
    def post(self, request, pk: int):
        dataset = get_object_or_404(Dataset, pk=pk)
        if not services.cancel_dataset(dataset.pk):
            dataset.refresh_from_db()
            return Response({"detail": f"dataset {pk} is {dataset.status}: only a queued or running import can be cancelled"},
                            status=status.HTTP_409_CONFLICT)
        dataset.refresh_from_db()
        return Response(DatasetSerializer(dataset, context={"request": request}).data)
