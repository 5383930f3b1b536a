from django.contrib import admin

from apps.core.models import BeatLease


@admin.register(BeatLease)
class BeatLeaseAdmin(admin.ModelAdmin):
    """Read-only: which beat process leads, and until when its lease runs."""

    list_display = ("name", "holder", "acquired_at", "expires_at")
    readonly_fields = ("name", "holder", "acquired_at", "expires_at")

    def has_add_permission(self, request):
        return False
