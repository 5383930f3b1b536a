"""Live progress over WebSocket: real uvicorn processes, a real WebSocket client, events from RabbitMQ."""
import asyncio
import json

import pytest
import websockets

from apps.control.services import record_owner
from tests.control.conftest import start_web, wait_state
from tests.support.control_tasks import cpu_steps
from tests.support.tasks import io_echo

pytestmark = pytest.mark.django_db(transaction=True)


async def collect(url: str, until_state: str, timeout: float = 60, on_open=None) -> list[dict]:
    messages = []
    async with websockets.connect(url) as socket:
        if on_open:
            await asyncio.get_running_loop().run_in_executor(None, on_open)
        async with asyncio.timeout(timeout):
            while True:
                message = json.loads(await socket.recv())
                messages.append(message)
                if message.get("state") == until_state:
                    return messages


async def close_code(url: str, **kwargs) -> int:
    """The close code the server answered with (403: the handshake itself was refused)."""
    try:
        socket = await websockets.connect(url, **kwargs)
    except websockets.InvalidStatus as refused:
        return refused.response.status_code
    async with socket:
        try:
            await asyncio.wait_for(socket.recv(), 10)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code
    return 0


def test_one_task_streams_progress_then_success(recorder, cpu_worker, web, staff):
    # Subscribe first, then publish, so no event is missed.
    from apps.control.models import TaskRecord

    task_id = "live-" + __import__("uuid").uuid4().hex
    TaskRecord.objects.create(task_id=task_id, name="tests.cpu.steps", queue="dataset")

    def publish():
        cpu_steps.apply_async(args=[4, 0.3], task_id=task_id)

    messages = asyncio.run(collect(f"{web.ws}/ws/v1/tasks/{task_id}/?token={staff.token}", "SUCCESS", on_open=publish))
    assert messages[0]["event"] == "snapshot"
    progress = [m for m in messages if m["state"] == "PROGRESS"]
    assert [m["current"] for m in progress] == [1, 2, 3, 4] and progress[-1]["total"] == 4
    assert progress[0]["step"] == "step 1" and progress[0]["message"] == "1 of 4"
    assert messages[-1]["result"] == "4"
    assert {m["task_id"] for m in messages} == {task_id}


def test_user_stream_carries_only_that_users_tasks_across_two_web_processes(
        recorder, io_worker, web, broker_url, worker_db_url, member):
    second = start_web(broker_url, worker_db_url)  # events reach every web process
    try:
        ids = {}

        def publish():
            other = io_echo.delay("not mine")
            mine = io_echo.delay("mine")
            record_owner(mine.id, member)  # as a service does, right after publishing
            ids.update(mine=mine.id, other=other.id)

        async def read_until_success(socket) -> list[dict]:
            messages = []
            async with asyncio.timeout(60):
                while not messages or messages[-1].get("state") != "SUCCESS":
                    messages.append(json.loads(await socket.recv()))
            return messages

        async def both():
            url = f"/ws/v1/tasks/?token={member.token}"
            async with websockets.connect(web.ws + url) as one, websockets.connect(second.ws + url) as two:
                await asyncio.get_running_loop().run_in_executor(None, publish)  # both sockets are live
                return await asyncio.gather(read_until_success(one), read_until_success(two))

        for stream in asyncio.run(both()):
            assert {m["task_id"] for m in stream} == {ids["mine"]}
            assert stream[-1]["state"] == "SUCCESS"
    finally:
        second.process.stop()


def test_socket_refusals(web, staff, member):
    # No token: session auth, which needs an allowed Origin (cross-site WebSocket hijacking).
    assert asyncio.run(close_code(f"{web.ws}/ws/v1/tasks/abc/")) == 403
    assert asyncio.run(close_code(f"{web.ws}/ws/v1/tasks/abc/", origin="http://127.0.0.1")) == 4401
    assert asyncio.run(close_code(f"{web.ws}/ws/v1/tasks/abc/?token=wrong")) == 4401
    assert asyncio.run(close_code(f"{web.ws}/ws/v1/tasks/no-such-task/?token={member.token}")) == 4404
    from apps.control.models import TaskRecord

    TaskRecord.objects.create(task_id="someone-elses", owner=staff)
    assert asyncio.run(close_code(f"{web.ws}/ws/v1/tasks/someone-elses/?token={member.token}")) == 4403


def test_progress_page_is_now_the_console_task_page(recorder, io_worker, client, staff):
    result = io_echo.delay(1)
    wait_state(result.id, "SUCCESS")
    client.force_login(staff)
    response = client.get(f"/admin/control/taskrecord/{result.id}/live/", follow=True)
    assert response.redirect_chain == [(f"/console/tasks/{result.id}/", 302)]
    page = response.content.decode()
    assert f'data-task="{result.id}"' in page and "control/console/task.js" in page
    assert "tests.io.echo" in page and "SUCCESS" in page
