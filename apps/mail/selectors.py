"""Reads of the mail app."""
from __future__ import annotations

from pathlib import Path

from apps.mail.models import Message
from apps.mail.sink import mailbox_dir


def message_by_id(message_id: int) -> Message | None:
    try:  # get(), not filter().first(): no ORDER BY to build and run for a primary key
        return Message.objects.get(pk=message_id)
    except Message.DoesNotExist:
        return None


def captured_mail(limit: int = 20) -> list[Path]:
    """The newest messages the local SMTP sink stored (var/mailbox/*.eml), newest first."""
    return sorted(mailbox_dir().glob("*.eml"), reverse=True)[:limit]
