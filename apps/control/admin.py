"""Admin: the ledger (read-only), dead letters (replay/purge), paused queues (pause/resume), the audit trail."""
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html

from apps.control import selectors, services
from apps.control.errors import ControlError
from apps.control.models import ControlAction, DeadLetter, PausedQueue, TaskRecord
from project import topology


class ReadOnly:
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(TaskRecord)
class TaskRecordAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["task_id", "name", "state", "queue", "worker", "attempts", "sent_at", "runtime", "live"]
    list_filter = ["state", "queue"]
    search_fields = ["task_id", "name"]
    exclude = ["call"]  # the unredacted call, kept for retry only
    actions = ["cancel", "retry"]

    @admin.display(description="live")
    def live(self, obj):
        return format_html('<a href="{}">task page</a>', reverse("console-task", args=[obj.task_id]))

    def get_urls(self):
        return [path("<str:task_id>/live/", self.admin_site.admin_view(self.live_view),
                     name="control_taskrecord_live")] + super().get_urls()

    def live_view(self, request, task_id):
        """The old progress page's address: the console's task page took its place (it waits for a task the
        recorder has not written yet, right after enqueue)."""
        return redirect("console-task", task_id)

    @admin.action(description="Cancel selected tasks")
    def cancel(self, request, queryset):
        self._each(request, queryset, lambda r: services.cancel_task(r.task_id, actor=request.user), "cancelled")

    @admin.action(description="Retry selected tasks (new id)")
    def retry(self, request, queryset):
        self._each(request, queryset, lambda r: services.retry_task(r.task_id, actor=request.user), "retried")

    def _each(self, request, queryset, action, verb):
        done = 0
        for record in queryset:
            try:
                action(record)
                done += 1
            except ControlError as exc:
                self.message_user(request, exc.message, messages.ERROR)
        self.message_user(request, f"{done} task(s) {verb}")


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["id", "dead_letter_queue", "reason", "task_name", "task_id", "dead_at", "replayed_at"]
    list_filter = ["dead_letter_queue", "reason", ("replayed_at", admin.EmptyFieldListFilter)]
    search_fields = ["task_id", "task_name"]
    exclude = ["body"]
    readonly_fields = ["body_text"]
    actions = ["replay", "purge"]

    @admin.display(description="body")
    def body_text(self, obj):
        return bytes(obj.body).decode("utf-8", errors="replace")

    def changelist_view(self, request, extra_context=None):
        try:
            services.refresh_dead_letters()  # the list shows what is in the queues now
        except ControlError as exc:
            self.message_user(request, exc.message, messages.WARNING)
        return super().changelist_view(request, extra_context)

    @admin.action(description="Replay selected dead letters to their original route")
    def replay(self, request, queryset):
        outcome = services.replay_dead_letters(list(queryset), actor=request.user)
        self.message_user(request, f"replayed {len(outcome['replayed'])}, skipped {len(outcome['skipped'])}")
        for skip in outcome["skipped"]:
            self.message_user(request, f"dead letter {skip['id']}: {skip['reason']}", messages.WARNING)

    @admin.action(description="Purge selected dead letters")
    def purge(self, request, queryset):
        self.message_user(request, f"purged {services.purge_dead_letters(queryset, actor=request.user)}")


@admin.register(PausedQueue)
class PausedQueueAdmin(admin.ModelAdmin):
    """Adding a row pauses the queue on every worker; deleting it resumes (through the services, audited)."""

    list_display = ["queue", "paused_at", "paused_by", "reason"]
    fields = ["queue", "reason"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "queue":
            from django import forms

            return forms.ChoiceField(choices=[(lane.name, lane.name) for lane in topology.LANES])
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def has_change_permission(self, request, obj=None):
        return obj is None

    def save_model(self, request, obj, form, change):
        try:
            paused = services.pause_queue(obj.queue, actor=request.user, reason=obj.reason)
            obj.pk = paused.pk
        except ControlError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_model(self, request, obj):
        services.resume_queue(obj.queue, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            services.resume_queue(obj.queue, actor=request.user)


@admin.register(ControlAction)
class ControlActionAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["at", "actor_name", "action", "target"]
    list_filter = ["action"]
    search_fields = ["target", "actor_name"]

    def has_delete_permission(self, request, obj=None):
        return False
