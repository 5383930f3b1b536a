"""The SMTP side of delivery: a per-process pool of open connections and one careful conversation.

The conversation is smtplib's MAIL/RCPT/DATA spelled out, so we know *where* it failed:
before the end of DATA nothing can have been delivered and a retry is safe; after we sent the final
"." and before the server replied, the server may already have accepted the message (AcceptanceUnknown).
"""
from __future__ import annotations

import re
import smtplib
import ssl
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings

from apps.core.tasks import seconds_to_limit


class SMTPFailure(Exception):
    def __init__(self, message: str, code: int | None = None, reply: str = ""):
        super().__init__(message)
        self.code = code
        self.reply = reply


class TransientFailure(SMTPFailure):
    """Worth retrying: refused/reset connection, timeout, 4xx reply."""


class PermanentFailure(SMTPFailure):
    """Never worth retrying: 5xx reply, address refused."""


class AcceptanceUnknown(SMTPFailure):
    """No reply to the end of DATA: the server may or may not have the message.

    ``interrupted``: the task itself was stopped while it waited for that reply (a cancel, the worker's
    cancel of running tasks when it loses the broker); the caller records the outcome, then re-raises it.
    """

    def __init__(self, *args, interrupted: BaseException | None = None):
        super().__init__(*args)
        self.interrupted = interrupted


@dataclass
class Accepted:
    code: int
    reply: str


@dataclass
class _Idle:
    smtp: smtplib.SMTP
    since: float


class ConnectionPool:
    """Open SMTP connections kept between messages, one per concurrent green thread at most.

    A connection is used by one green thread at a time (taken out of the list while in use), so the
    SMTP state machine of one conversation never interleaves with another.
    """

    def __init__(self):
        self._idle: list[_Idle] = []

    def _open(self) -> smtplib.SMTP:
        timeout = settings.EMAIL_TIMEOUT
        if settings.EMAIL_USE_SSL:
            smtp = smtplib.SMTP_SSL(settings.EMAIL_HOST, settings.EMAIL_PORT, timeout=timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(settings.EMAIL_HOST, settings.EMAIL_PORT, timeout=timeout)
            if settings.EMAIL_USE_TLS:
                smtp.starttls(context=ssl.create_default_context())
        if settings.EMAIL_HOST_USER:
            smtp.login(settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD)
        return smtp

    def take(self) -> tuple[smtplib.SMTP, bool]:
        """(connection, reused): an idle connection if a fresh-enough one exists, else a new one."""
        now = time.monotonic()
        while self._idle:
            try:
                idle = self._idle.pop()
            except IndexError:  # on the threads pool another task took the last one in between
                break
            if now - idle.since < settings.MAIL_SMTP_IDLE_SECONDS:
                return idle.smtp, True
            _close(idle.smtp)
        return self._open(), False

    def give_back(self, smtp: smtplib.SMTP) -> None:
        if len(self._idle) < settings.MAIL_SMTP_POOL_SIZE:
            self._idle.append(_Idle(smtp, time.monotonic()))
        else:
            _close(smtp)

    def discard(self, smtp: smtplib.SMTP) -> None:
        _close(smtp)

    def close_all(self) -> None:
        while self._idle:
            _close(self._idle.pop().smtp)


def _reset_or_discard(smtp: smtplib.SMTP) -> None:
    try:
        smtp.rset()
    except (OSError, smtplib.SMTPException):
        pool.discard(smtp)
        return
    pool.give_back(smtp)


def _close(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except Exception:  # a broken connection cannot be quit politely; it is being dropped anyway
        smtp.close()


pool = ConnectionPool()


def _reply_text(resp: bytes | str) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)


def _check(code: int, resp, expected: tuple[int, ...], what: str) -> None:
    if code in expected:
        return
    reply = f"{code} {_reply_text(resp)}"
    if 400 <= code < 500 or code == -1:
        raise TransientFailure(f"{what}: {reply}", code, reply)
    raise PermanentFailure(f"{what}: {reply}", code, reply)


def _conversation(smtp: smtplib.SMTP, sender: str, recipients: list[str], data: bytes) -> Accepted:
    smtp.ehlo_or_helo_if_needed()
    code, resp = smtp.mail(sender)
    _check(code, resp, (250,), "MAIL FROM refused")
    for rcpt in recipients:
        code, resp = smtp.rcpt(rcpt)
        if code not in (250, 251):
            _check(code, resp, (250, 251), f"recipient {rcpt} refused")
    smtp.putcmd("data")
    code, resp = smtp.getreply()
    _check(code, resp, (354,), "DATA refused")
    payload = smtplib._quote_periods(re.sub(rb"(?:\r\n|\n|\r(?!\n))", smtplib.bCRLF, data))
    if not payload.endswith(smtplib.bCRLF):
        payload += smtplib.bCRLF
    smtp.send(payload + b"." + smtplib.bCRLF)
    try:
        code, resp = smtp.getreply()  # the server's verdict on the whole message
    except (OSError, smtplib.SMTPException, SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
        raise AcceptanceUnknown(f"no reply after the end of DATA: {exc!r}") from exc
    except BaseException as exc:
        # Killed while it waited (eventlet's GreenletExit: a cancel, or the worker cancelling its running
        # tasks on a broker connection loss). The message may be in the kernel's send buffer and reach the
        # server later (a cluster case had it: the row was left SENDING, the lease expired, and another
        # worker sent it a second time). It must end TIMED_OUT like any unanswered end of DATA.
        raise AcceptanceUnknown(f"interrupted after the end of DATA: {exc!r}", interrupted=exc) from exc
    _check(code, resp, (250,), "message refused")
    return Accepted(code, _reply_text(resp))


def _bound_by_time_limit(smtp: smtplib.SMTP) -> None:
    """On the threads pool a time limit reaches the task only when a blocking socket call returns: each
    wait of the conversation ends by the task's limit (EMAIL_TIMEOUT at most), so the limit holds there as
    on eventlet, whose timer interrupts the wait itself."""
    left = seconds_to_limit()
    if smtp.sock is not None:
        smtp.sock.settimeout(settings.EMAIL_TIMEOUT if left is None else min(settings.EMAIL_TIMEOUT, max(left, 0) + 0.05))


def send(sender: str, recipients: list[str], data: bytes) -> Accepted:
    """Deliver one message; raise Transient/Permanent/AcceptanceUnknown with the server's reply."""
    try:
        smtp, reused = pool.take()
    except (OSError, smtplib.SMTPException, SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
        # refused, reset, timeout, TLS/auth trouble: nothing was sent
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            raise PermanentFailure(f"SMTP authentication failed: {exc}") from exc
        raise TransientFailure(f"cannot connect to {settings.EMAIL_HOST}:{settings.EMAIL_PORT}: {exc!r}") from exc
    _bound_by_time_limit(smtp)
    try:
        try:
            accepted = _conversation(smtp, sender, recipients, data)
        except smtplib.SMTPServerDisconnected:
            if not reused:
                raise
            # The server closed an idle connection we kept: nothing was sent yet, try once on a fresh one.
            pool.discard(smtp)
            smtp = pool._open()
            _bound_by_time_limit(smtp)
            accepted = _conversation(smtp, sender, recipients, data)
    except AcceptanceUnknown:
        pool.discard(smtp)
        raise
    except SMTPFailure:
        _reset_or_discard(smtp)  # a refused command leaves the session usable after RSET
        raise
    except (OSError, smtplib.SMTPException, SoftTimeLimitExceeded, TimeLimitExceeded) as exc:
        # Disconnect, socket timeout or the task's time limit before the end of DATA: nothing was
        # delivered, the connection's state is unknown, a retry is safe.
        pool.discard(smtp)
        raise TransientFailure(f"SMTP conversation failed before the end of DATA: {exc!r}") from exc
    except BaseException:
        pool.discard(smtp)
        raise
    pool.give_back(smtp)
    return accepted
