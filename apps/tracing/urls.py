from django.urls import path

from apps.tracing import views

app_name = "tracing"
urlpatterns = [
    path("events/", views.EventListView.as_view(), name="events"),
    path("traces/<str:trace_id>/", views.TraceView.as_view(), name="trace"),
]
