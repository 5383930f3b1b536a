from django.contrib import admin, messages

from apps.mail import services
from apps.mail.models import Attachment, DomainThrottle, Message


class AttachmentInline(admin.TabularInline):
    model = Attachment
    fields = ("filename", "mimetype", "size")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "subject", "recipient_list", "bulk", "attempts", "smtp_code", "created_at",
                    "sent_at")
    list_filter = ("status", "bulk")
    search_fields = ("idempotency_key", "subject", "to", "task_id")
    readonly_fields = [f.name for f in Message._meta.fields]
    inlines = [AttachmentInline]
    actions = ["resend_messages", "cancel_messages"]

    @admin.display(description="to")
    def recipient_list(self, obj):
        return ", ".join(obj.to)

    def has_add_permission(self, request):
        return False  # messages come in through the service, the backend, the API or mail_send

    @admin.action(description="Resend (FAILED, TIMED_OUT or CANCELLED only)")
    def resend_messages(self, request, queryset):
        done = sum(services.resend(pk) for pk in queryset.values_list("pk", flat=True))
        skipped = queryset.count() - done
        self.message_user(request, f"{done} message(s) queued again; {skipped} skipped (sent, queued or sending).",
                          messages.SUCCESS if done else messages.WARNING)

    @admin.action(description="Cancel (QUEUED only)")
    def cancel_messages(self, request, queryset):
        done = sum(services.cancel(pk) for pk in queryset.values_list("pk", flat=True))
        skipped = queryset.count() - done
        self.message_user(request, f"{done} message(s) cancelled; {skipped} skipped (already sending or finished).",
                          messages.SUCCESS if done else messages.WARNING)


@admin.register(DomainThrottle)
class DomainThrottleAdmin(admin.ModelAdmin):
    list_display = ("domain", "next_free_at")
