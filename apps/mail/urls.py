from django.urls import path

from apps.mail import views

urlpatterns = [
    path("messages/", views.send, name="mail-send"),
    path("batches/", views.send_batch, name="mail-send-batch"),
    path("messages/<int:message_id>/", views.detail, name="mail-detail"),
]
