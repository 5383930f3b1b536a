"""A local SMTP sink: accepts every message and keeps it as an .eml file under var/mailbox/."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from django.conf import settings


def mailbox_dir() -> Path:
    path = Path(settings.VAR_DIR) / "mailbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


class MailboxHandler:
    """aiosmtpd handler: one file per message, named so `ls` sorts them by arrival."""

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        (mailbox_dir() / name).write_bytes(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"
