from django.urls import path

from apps.datasets import views

urlpatterns = [
    path("", views.DatasetListView.as_view(), name="dataset-list"),
    path("<int:pk>/", views.DatasetDetailView.as_view(), name="dataset-detail"),
    path("<int:pk>/profile/", views.DatasetProfileView.as_view(), name="dataset-profile"),
    path("<int:pk>/cancel/", views.DatasetCancelView.as_view(), name="dataset-cancel"),
]
