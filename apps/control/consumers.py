"""WebSocket endpoints: one task's live state (/ws/v1/tasks/<id>/) and a user's tasks (/ws/v1/tasks/).

Authentication: ``?token=<API token>`` or the Django session cookie (then the Origin must be an allowed
host, else the handshake is refused with HTTP 403). Close codes: 4401 not authenticated, 4403 not allowed
to see that task, 4404 no such task.
"""
from __future__ import annotations

import asyncio

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils import timezone

from apps.control.live import hub
from apps.control.models import TaskRecord

OWNER_SETTLE_SECONDS = 5.0


def _snapshot(record: TaskRecord) -> dict:
    # A finished task's last step ("merging") is history, not its state: only active tasks show one.
    step, message = ("", "") if record.finished else (record.progress_step, record.progress_message)
    return {"task_id": record.task_id, "state": record.state, "event": "snapshot", "name": record.name,
            "queue": record.queue, "step": step, "message": message, "current": record.progress_current,
            "total": record.progress_total, "result": record.result or None, "error": record.error or None}


class _LiveConsumer(AsyncJsonWebsocketConsumer):
    async def refuse(self, code: int) -> None:
        """Accept, then close with a code that says why (closing before accept is a bare HTTP 403)."""
        await self.accept()
        await self.close(code=code)

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(4401)
            return
        self.user = user
        if not await self.authorize():
            return
        live = hub()
        self.events = live.subscribe()
        # Accept only once this process's event queue is bound: events after the handshake are never missed.
        await asyncio.get_running_loop().run_in_executor(None, live.ready.wait, 10)
        await self.accept()
        await self.send_initial()
        self.pump = asyncio.ensure_future(self._pump())

    async def disconnect(self, code):
        if hasattr(self, "events"):
            hub().unsubscribe(self.events)
        if hasattr(self, "pump"):
            self.pump.cancel()

    async def _pump(self):
        while True:
            message = await self.events.get()
            if await self.wants(message):
                await self.send_json(message)

    async def authorize(self) -> bool:
        return True

    async def send_initial(self):
        pass

    async def wants(self, message: dict) -> bool:
        raise NotImplementedError


class TaskProgressConsumer(_LiveConsumer):
    async def authorize(self) -> bool:
        self.task_id = self.scope["url_route"]["kwargs"]["task_id"]
        self.record = await database_sync_to_async(TaskRecord.objects.filter(task_id=self.task_id).first)()
        if self.user.is_staff:
            return True
        if self.record is None:
            await self.refuse(4404)
            return False
        if self.record.owner_id != self.user.pk:
            await self.refuse(4403)
            return False
        return True

    async def send_initial(self):
        if self.record is not None:
            await self.send_json(_snapshot(self.record))

    async def wants(self, message: dict) -> bool:
        return message.get("task_id") == self.task_id


class UserTasksConsumer(_LiveConsumer):
    """Every task the user owns (TaskRecord.owner). Ownership is looked up once per task id and cached;
    "not mine" is cached only for rows older than OWNER_SETTLE_SECONDS, because a service records the owner
    just after it publishes, and the first events can arrive before that."""

    async def send_initial(self):
        self.owned: dict[str, bool] = {}

    async def wants(self, message: dict) -> bool:
        task_id = message.get("task_id")
        if task_id in self.owned:
            return self.owned[task_id]
        row = await database_sync_to_async(
            lambda: TaskRecord.objects.filter(task_id=task_id).values_list("owner_id", "sent_at").first())()
        mine = bool(row) and row[0] == self.user.pk
        settled = bool(row) and row[1] is not None and \
            (timezone.now() - row[1]).total_seconds() > OWNER_SETTLE_SECONDS
        if mine or settled:
            if len(self.owned) > 50_000:
                self.owned.clear()
            self.owned[task_id] = mine
        return mine
