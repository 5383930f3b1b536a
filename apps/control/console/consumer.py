"""The console's WebSocket (/ws/v1/console/): a snapshot of every live panel every few seconds, plus
the task events of the existing hub (apps/control/live.py) as they come. Staff only (close 4403)."""
from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async

from apps.control.console import snapshot
from apps.control.consumers import _LiveConsumer
from apps.control.live import hub

logger = logging.getLogger(__name__)

SNAPSHOT_EVERY_SECONDS = 2.0
EVENTS_PER_MESSAGE = 200  # a burst of events goes out in batches, so a busy platform cannot flood the page


class ConsoleConsumer(_LiveConsumer):
    async def authorize(self) -> bool:
        if not self.user.is_staff:
            await self.refuse(4403)
            return False
        return True

    async def send_initial(self):
        self.ticker = asyncio.ensure_future(self._tick())

    async def disconnect(self, code):
        if hasattr(self, "ticker"):
            self.ticker.cancel()
        await super().disconnect(code)

    async def _tick(self):
        while True:
            try:
                # Off the thread Django runs its sync views in: the inspect broadcasts wait up to a second.
                data = await database_sync_to_async(snapshot.cached, thread_sensitive=False)(hub().workers)
                await self.send_json({"type": "snapshot", **data})
            except Exception:  # noqa: BLE001  (panels catch their own errors; anything else: log, try again)
                logger.exception("console snapshot failed")
            await asyncio.sleep(SNAPSHOT_EVERY_SECONDS)

    async def _pump(self):
        while True:
            batch = [await self.events.get()]
            while not self.events.empty() and len(batch) < EVENTS_PER_MESSAGE:
                batch.append(self.events.get_nowait())
            await self.send_json({"type": "events", "events": batch})
