from django.urls import path

from apps.control import views

urlpatterns = [
    path("tasks/", views.TaskListView.as_view(), name="control-tasks"),
    path("tasks/<str:task_id>/", views.TaskDetailView.as_view(), name="control-task"),
    path("tasks/<str:task_id>/cancel/", views.TaskCancelView.as_view(), name="control-task-cancel"),
    path("tasks/<str:task_id>/retry/", views.TaskRetryView.as_view(), name="control-task-retry"),
    path("stats/", views.StatsView.as_view(), name="control-stats"),
    path("workers/", views.WorkerListView.as_view(), name="control-workers"),
    path("workers/<str:hostname>/pool-restart/", views.WorkerPoolRestartView.as_view(), name="control-pool-restart"),
    path("workers/<str:hostname>/shutdown/", views.WorkerShutdownView.as_view(), name="control-worker-shutdown"),
    path("queues/", views.QueueListView.as_view(), name="control-queues"),
    path("queues/<str:name>/pause/", views.QueuePauseView.as_view(), name="control-queue-pause"),
    path("queues/<str:name>/resume/", views.QueueResumeView.as_view(), name="control-queue-resume"),
    path("dead-letters/", views.DeadLetterListView.as_view(), name="control-dead-letters"),
    path("dead-letters/replay/", views.DeadLetterReplayView.as_view(), name="control-dead-letters-replay"),
    path("dead-letters/purge/", views.DeadLetterPurgeView.as_view(), name="control-dead-letters-purge"),
    path("dead-letters/<int:letter_id>/", views.DeadLetterDetailView.as_view(), name="control-dead-letter"),
    path("dead-letters/<int:letter_id>/replay/", views.DeadLetterReplayOneView.as_view(), name="control-dead-letter-replay"),
    path("audit/", views.AuditListView.as_view(), name="control-audit"),
    path("metrics/", views.MetricsView.as_view(), name="control-metrics"),
]
