from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("console/", include("apps.control.console.urls")),  # the operator console (staff, live)
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("apps.core.urls")),
    path("api/v1/datasets/", include("apps.datasets.urls")),
    path("api/v1/tracing/", include("apps.tracing.urls")),
    path("api/v1/mail/", include("apps.mail.urls")),
    path("api/v1/", include("apps.control.urls")),
]
