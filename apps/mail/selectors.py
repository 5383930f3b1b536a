"""Reads of the mail app."""
from __future__ import annotations

from pathlib import Path

from apps.core.prepared import PreparedRead
from apps.mail.models import Message
from apps.mail.sink import mailbox_dir

# The API's message detail read, its SQL compiled once (apps/core/prepared.py).
_MESSAGE = PreparedRead(Message, lambda pk: Message.objects.filter(pk=pk).order_by(), pk=int)


def message_by_id(message_id: int) -> Message | None:
    return _MESSAGE.first(pk=message_id)


def captured_mail(limit: int = 20) -> list[Path]:
    """The newest messages the local SMTP sink stored (var/mailbox/*.eml), newest first."""
    return sorted(mailbox_dir().glob("*.eml"), reverse=True)[:limit]
