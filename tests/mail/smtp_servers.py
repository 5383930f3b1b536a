"""Real SMTP servers (aiosmtpd) the mail tests start on a free port, one behaviour per recipient domain.

The io worker can point at one EMAIL_HOST:EMAIL_PORT, so the five servers the tests need share a port
and are chosen by the recipient's domain:
  accept.test    accepts (bulk.test: accepts after BULK_DELAY, a server that takes time per message)
  slow.test      hangs SLOW_SECONDS at RCPT for the first N tries of a message (then accepts)
  slowdata.test  hangs SLOW_SECONDS after the end of DATA (the server may have the message: TIMED_OUT)
  tempfail.test  replies 451 to DATA for the first N tries (N from the local part: "x+2@tempfail.test")
  reject.test    replies 550 to RCPT
  drop.test      drops the connection at RCPT for the first N tries
  throttle.test  accepts (the rate-limit test counts arrival times)
N is the number after "+" in the local part (default: always).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller

from tests.support.net import free_port

SLOW_SECONDS = 30
BULK_DELAY = 0.2


@dataclass
class Received:
    at: float
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


def _times(address: str) -> int | None:
    local = address.split("@")[0]
    if "+" in local:
        try:
            return int(local.rsplit("+", 1)[1])
        except ValueError:
            return None
    return None


@dataclass
class Behaviour:
    received: list[Received] = field(default_factory=list)
    tries: Counter = field(default_factory=Counter)  # (stage, address) -> times seen
    connections: int = 0
    rcpt_seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _first_times(self, stage: str, address: str) -> bool:
        """True while this address is within its first N tries at this stage (always, without N)."""
        with self.lock:
            self.tries[(stage, address)] += 1
            n = _times(address)
            return n is None or self.tries[(stage, address)] <= n

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = address.rsplit("@", 1)[-1].lower()
        self.rcpt_seen.append(address)
        if domain == "reject.test":
            return "550 5.1.1 <%s>: no such user here" % address
        if domain == "slow.test" and self._first_times("rcpt", address):
            await asyncio.sleep(SLOW_SECONDS)
        if domain == "drop.test" and self._first_times("rcpt", address):
            server.transport.close()
            return "421 closing"  # never reaches the client: the transport is gone
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        domain = envelope.rcpt_tos[0].rsplit("@", 1)[-1].lower()
        if domain == "tempfail.test" and self._first_times("data", envelope.rcpt_tos[0]):
            return "451 4.3.0 mailbox busy, try again later"
        if domain == "slowdata.test":
            await asyncio.sleep(SLOW_SECONDS)
        if domain == "bulk.test":
            await asyncio.sleep(BULK_DELAY)
        with self.lock:
            self.received.append(Received(time.time(), envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or envelope.content))
            number = len(self.received)
        return f"250 2.0.0 Ok: queued as TEST{number}"

    def messages_to(self, address: str) -> list[Received]:
        return [r for r in list(self.received) if address in r.rcpt_tos]


class CountingController(Controller):
    def __init__(self, behaviour: Behaviour, **kwargs):
        super().__init__(behaviour, **kwargs)
        self.behaviour = behaviour

    def factory(self):
        self.behaviour.connections += 1
        return super().factory()


def start_server() -> CountingController:
    controller = CountingController(Behaviour(), hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller
