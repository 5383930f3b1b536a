from django.urls import path

from apps.control.console import views

urlpatterns = [
    path("", views.console, name="console"),
    path("tasks/<str:task_id>/", views.task, name="console-task"),
    path("queues/<str:name>/pause/", views.pause, name="console-queue-pause"),
    path("queues/<str:name>/resume/", views.resume, name="console-queue-resume"),
    path("dead-letters/", views.dead_letters, name="console-dead-letters"),
]
