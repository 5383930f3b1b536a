"""Input checks done before anything is stored: bad input is refused at enqueue with a clear message."""
from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email


class MailInputError(ValueError):
    """The caller asked for a message that cannot be sent; ``field`` names what was wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-/]*$")


def no_line_breaks(field: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise MailInputError(field, "must not contain line breaks (header injection)")
    return value


def address(field: str, value) -> str:
    if not isinstance(value, str):
        raise MailInputError(field, f"{value!r} is not an email address")
    no_line_breaks(field, value)
    try:
        validate_email(value)
    except ValidationError:
        raise MailInputError(field, f"{value!r} is not a valid email address") from None
    return value


def addresses(field: str, values) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [address(field, value) for value in values]


def recipients(to: list[str], cc: list[str], bcc: list[str]) -> None:
    total = len(to) + len(cc) + len(bcc)
    if total == 0:
        raise MailInputError("to", "at least one recipient is required")
    if total > settings.MAIL_MAX_RECIPIENTS:
        raise MailInputError("to", f"{total} recipients, over the limit of {settings.MAIL_MAX_RECIPIENTS} per message")


def headers(values: dict | None) -> dict[str, str]:
    clean = {}
    for name, value in (values or {}).items():
        if not isinstance(name, str) or not re.fullmatch(r"[!-9;-~]+", name):
            raise MailInputError("headers", f"{name!r} is not a valid header name")
        clean[name] = no_line_breaks(f"headers.{name}", str(value))
    return clean


def template_name(value: str) -> str:
    if not _TEMPLATE_NAME.match(value) or ".." in value:
        raise MailInputError("template", f"{value!r} is not a valid template name (letters, digits, _ - /)")
    return value


def attachment_size(filename: str, size: int) -> None:
    limit = settings.MAIL_MAX_ATTACHMENT_BYTES
    if size > limit:
        raise MailInputError("attachments", f"{filename!r} is {size} bytes, over the limit of {limit} bytes "
                                            "(MAIL_MAX_ATTACHMENT_BYTES)")
