"""A Django email backend that stores messages in the outbox instead of talking SMTP.

With EMAIL_BACKEND = "apps.mail.backends.OutboxEmailBackend", existing code (send_mail,
EmailMessage.send, password-reset mails) gets reliable asynchronous delivery unchanged.
An ``X-Idempotency-Key`` header, if present, becomes the message's idempotency key, and
``X-Mail-Lane: bulk`` puts it on the bulk lane; neither header is sent.
"""
from __future__ import annotations

from email.mime.base import MIMEBase

from django.core.mail.backends.base import BaseEmailBackend

from apps.mail import services


def _attachments(email) -> list[services.AttachmentInput]:
    result = []
    for attachment in email.attachments:
        if isinstance(attachment, MIMEBase):
            result.append(services.AttachmentInput(attachment.get_filename() or "attachment",
                                                   attachment.get_payload(decode=True) or b"",
                                                   attachment.get_content_type()))
            continue
        filename, content, mimetype = attachment
        if isinstance(content, str):
            content = content.encode()
        result.append(services.AttachmentInput(filename or "attachment", content,
                                               mimetype or "application/octet-stream"))
    return result


class OutboxEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages) -> int:
        stored = 0
        for email in email_messages:
            headers = dict(email.extra_headers)
            key = headers.pop("X-Idempotency-Key", None)
            bulk = headers.pop("X-Mail-Lane", "").strip().lower() == "bulk"  # newsletters: the bulk lane
            html = next((content for content, mimetype in getattr(email, "alternatives", [])
                         if mimetype == "text/html"), "")
            body = email.body
            if getattr(email, "content_subtype", "plain") == "html" and not html:
                body, html = "", email.body
            try:
                services.enqueue(
                    to=list(email.to), cc=list(email.cc), bcc=list(email.bcc), reply_to=list(email.reply_to),
                    subject=str(email.subject), body=body, html=html, from_email=email.from_email,
                    headers=headers, attachments=_attachments(email), idempotency_key=key,
                    bulk=bulk,
                )
            except services.MailInputError:
                if not self.fail_silently:
                    raise
                continue
            stored += 1
        return stored
