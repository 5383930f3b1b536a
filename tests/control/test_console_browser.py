"""The operator console in a real browser (headless chromium) against real processes: the web role
under uvicorn (HTTP + WebSocket), the recorder and real workers on the session's own vhost.

The screenshots in docs/img/ are taken here (docs/control.md): CONSOLE_SCREENSHOTS=docs/img."""
from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from apps.control import services, states
from apps.control.models import ControlAction, DeadLetter, PausedQueue
from tests.control.conftest import wait_state
from tests.control.test_dead_letters_and_retry import drained
from tests.control.test_live import close_code
from tests.support.browser import chromium, quit_browser
from tests.support.control_tasks import io_reject_unless
from tests.support.tasks import io_echo, io_mark
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Screenshots go under var/ on every run, so a test run leaves the checkout clean; the ones in docs/img
# (docs/control.md) are refreshed with CONSOLE_SCREENSHOTS=docs/img.
SCREENSHOTS = Path(settings.BASE_DIR) / os.environ.get("CONSOLE_SCREENSHOTS", "var/test-logs/screenshots")


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    quit_browser(driver)


def log_in(browser, web, user, next_path="/console/"):
    browser.delete_all_cookies()
    browser.get(f"{web.url}/admin/login/?next={next_path}")
    browser.find_element(By.NAME, "username").send_keys(user.username)
    browser.find_element(By.NAME, "password").send_keys("x")
    browser.execute_script("window.loginFormPage = true;")  # a new document gets a fresh window object
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # click() does not wait for the navigation the submit starts: wait until a new document has loaded. While
    # the old one is torn down chromedriver can answer any command with an error other than "stale element"
    # ("unknown error: unhandled inspector error: Node with given id does not belong to the document", seen
    # in a CI run through selenium's staleness_of), so such errors mean "not yet".
    WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script("return !window.loginFormPage && document.readyState === 'complete';"))


def text(browser, selector: str) -> str:
    """Text of an element the page re-renders every snapshot (retried when it was replaced mid-read)."""
    for _ in range(5):
        try:
            found = browser.find_elements(By.CSS_SELECTOR, selector)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            time.sleep(0.1)
    return ""


def attribute(browser, selector: str, name: str) -> str:
    return browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
        selector, name) or ""


def click(browser, selector: str) -> None:
    """Click an element of a live panel; the table may be redrawn between finding and clicking."""
    def clicked():
        try:
            browser.find_element(By.CSS_SELECTOR, selector).click()
            return True
        except StaleElementReferenceException:
            return False

    wait_for(clicked, timeout=10, message=f"{selector} to be clickable")


def live_console(browser, web, staff):
    log_in(browser, web, staff)
    assert browser.current_url == f"{web.url}/console/"
    wait_for(lambda: text(browser, "#live-status") == "live", timeout=30, message="the console's socket to open")
    wait_for(lambda: text(browser, "#queues tr[data-queue=ops_trace] td.name"), timeout=30,
             message="the first snapshot")


def shot(browser, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / name))


def test_the_console_is_for_staff_only(web, browser, staff, member):
    browser.delete_all_cookies()
    browser.get(f"{web.url}/console/")
    assert "/admin/login/" in browser.current_url and "Queues" not in browser.page_source

    log_in(browser, web, member)
    assert "/admin/login/" in browser.current_url and "Queues" not in browser.page_source
    assert "for a staff account" in browser.page_source  # the admin login refuses a non-staff user
    assert asyncio.run(close_code(f"{web.ws}/ws/v1/console/?token={member.token}")) == 4403
    assert asyncio.run(close_code(f"{web.ws}/ws/v1/console/?token=wrong")) == 4401

    live_console(browser, web, staff)
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#queues td.name")]
    assert names == ["dataset", "mail", "mail_bulk", "ops_trace"]


def test_numbers_move_while_a_worker_runs_tasks(recorder, io_worker, web, browser, staff):
    live_console(browser, web, staff)
    wait_for(lambda: text(browser, f"#workers tr[data-worker='{io_worker.nodename}'] td.succeeded"), timeout=30,
             message="the io worker's row")
    before_chart = int(attribute(browser, "figure[data-chart=ops_trace]", "data-total") or 0)
    before_done = int(text(browser, f"#workers tr[data-worker='{io_worker.nodename}'] td.succeeded").replace(",", ""))

    later = io_echo.apply_async(args=["later"], countdown=900)  # shows under "Scheduled and retrying"
    results = [io_echo.delay(i) for i in range(40)]
    # The page moves on its own (no reload): the publish rate, then the chart and the worker's count.
    wait_for(lambda: float(text(browser, "#queues tr[data-queue=ops_trace] td.publish-rate") or 0) > 0,
             timeout=30, message="a publish rate on ops_trace")
    for result in results:
        wait_state(result.id, states.SUCCESS)
    wait_for(lambda: int(attribute(browser, "figure[data-chart=ops_trace]", "data-total") or 0) >= before_chart + 40,
             timeout=30, message="the ops_trace chart to count the 40 tasks")
    wait_for(lambda: int(text(browser, f"#workers tr[data-worker='{io_worker.nodename}'] td.succeeded")
                         .replace(",", "") or 0) >= before_done + 40,
             timeout=30, message="the worker's succeeded count to grow by 40")
    assert text(browser, f"#workers tr[data-worker='{io_worker.nodename}'] td.heartbeat").endswith("ago")
    assert browser.find_elements(By.CSS_SELECTOR, "#events li")  # task events arrived on the socket
    try:
        wait_for(lambda: text(browser, f"#scheduled tr[data-task='{later.id}']"), timeout=30,
                 message="the countdown task under scheduled")
        assert "tests.io.echo" in text(browser, f"#scheduled tr[data-task='{later.id}']")
        shot(browser, "console.png")
    finally:
        services.cancel_task(later.id)


def test_pause_and_resume_from_the_page_change_what_the_worker_consumes(
        recorder, io_worker, web, browser, staff, effects):
    from tests.control.test_queues_and_cancel import consumed_by

    live_console(browser, web, staff)
    try:
        click(browser, "#queues tr[data-queue=ops_trace] button[data-action=pause]")
        wait_for(lambda: "queue ops_trace paused" in browser.page_source.lower(), timeout=15, message="the pause message")
        assert PausedQueue.objects.filter(queue="ops_trace").exists()
        assert ControlAction.objects.filter(action="queue.pause", target="ops_trace", actor_name="operator").exists()
        wait_for(lambda: "ops_trace" not in consumed_by(io_worker.nodename), timeout=15,
                 message="the io worker to stop consuming ops_trace")

        result = io_mark.delay(effects.path, "paused run")
        wait_for(lambda: int(text(browser, "#queues tr[data-queue=ops_trace] td.ready") or 0) >= 1, timeout=30,
                 message="the page to show the message waiting on the paused queue")
        assert text(browser, "#queues tr[data-queue=ops_trace] td.state").startswith("paused")
        assert effects.count("paused run") == 0  # waiting in RabbitMQ, not run
        shot(browser, "console-paused.png")

        click(browser, "#queues tr[data-queue=ops_trace] button[data-action=resume]")
        wait_for(lambda: "queue ops_trace resumed" in browser.page_source.lower(), timeout=15, message="the resume message")
        wait_for(lambda: effects.count("paused run") == 1, timeout=30, message="the held task to run after resume")
        wait_state(result.id, states.SUCCESS)
        assert "ops_trace" in consumed_by(io_worker.nodename)
        assert ControlAction.objects.filter(action="queue.resume", target="ops_trace", actor_name="operator").exists()
    finally:
        if PausedQueue.objects.filter(queue="ops_trace").exists():
            services.resume_queue("ops_trace")


def test_a_dead_letter_replayed_from_the_page_runs(recorder, io_worker, web, browser, staff, effects, tmp_path):
    flag = tmp_path / "flag"
    result = io_reject_unless.delay(str(flag), effects.path)
    [letter] = drained("ops_trace", task_id=result.id)
    wait_state(result.id, states.FAILURE)
    flag.write_text("go")  # the cause is fixed: a replay now runs

    live_console(browser, web, staff)
    browser.get(f"{web.url}/console/?dl_reason=exception#dead-letters")
    row = f"#letters tr[data-letter='{letter.id}']"
    assert browser.find_element(By.CSS_SELECTOR, row).text.count("exception") == 1
    browser.find_element(By.CSS_SELECTOR, f"{row} input[name=ids]").click()
    browser.execute_script("document.getElementById('dead-letters').scrollIntoView()")
    shot(browser, "console-dead-letters.png")
    browser.find_element(By.ID, "replay-letters").click()

    wait_for(lambda: "replayed 1, skipped 0" in browser.page_source.lower(), timeout=15, message="the replay message")
    wait_for(lambda: effects.count("ran") == 1, timeout=30, message="the replayed task to run")
    wait_state(result.id, states.SUCCESS)
    assert DeadLetter.objects.get(pk=letter.pk).replayed_at is not None
    assert ControlAction.objects.filter(action="deadletter.replay", actor_name="operator").exists()
    assert not browser.find_elements(By.CSS_SELECTOR, row)  # a replayed letter leaves the list


def test_a_dataset_import_on_its_task_page(recorder, cpu_worker, web, browser, staff, tmp_path):
    """The old progress page grown into the task page: dataset, chunk progress, rows/s, then the profile."""
    from apps.control.models import TaskRecord
    from apps.datasets import services as datasets
    from apps.datasets.models import Status
    from tests.datasets.conftest import settled, write_csv

    path = write_csv(tmp_path / "orders.csv", 20_000)
    dataset = datasets.register_dataset(str(path), options={"chunk_bytes": 64 * 1024, "pause_per_chunk": 1.0})
    wait_for(lambda: TaskRecord.objects.filter(task_id=dataset.task_id).exists(), timeout=60,
             message="the import's first progress event in the ledger")
    log_in(browser, web, staff, next_path=f"/console/tasks/{dataset.task_id}/")
    assert browser.current_url.endswith(f"/console/tasks/{dataset.task_id}/")
    wait_for(lambda: text(browser, "#live-status") == "live", timeout=30, message="the task socket")
    panel = text(browser, "section[data-panel=Dataset]")
    assert f"{dataset.name} v{dataset.version}" in panel and "chunks" in panel
    assert f"import of {dataset.name} v{dataset.version}" in text(browser, "#task-page h2")

    seen = set()

    def progressed():  # the bar moves from the socket while chunks run
        seen.add((text(browser, "#state"), text(browser, "#pct")))
        return any(state == "PROGRESS" and pct not in ("", "0%", "100%") for state, pct in seen)

    wait_for(progressed, timeout=60, interval=0.1, message="the progress bar to move")
    wait_for(lambda: "/s since this page opened" in text(browser, "#rate"), timeout=30, interval=0.1,
             message="rows/s from the live progress")
    wait_for(lambda: re.search(r"chunks\s+[1-9]\d* of \d+ done", text(browser, "section[data-panel=Dataset]")),
             timeout=30, message="the dataset panel to count done chunks while the import runs")
    shot(browser, "console-task.png")
    assert settled(dataset.pk).status == Status.READY
    # Done: the page reloads itself once and shows the profile link, all chunks and the rate.
    wait_for(lambda: "profile" in text(browser, "section[data-panel=Dataset]"), timeout=30,
             message="the profile link after the import finished")
    panel = text(browser, "section[data-panel=Dataset]")
    chunks = dataset.__class__.objects.get(pk=dataset.pk).chunks_total
    assert f"{chunks} of {chunks} done" in panel and "20,000 of" in panel and "rows/s" in panel
    assert text(browser, "#state") == "SUCCESS"
    link = browser.find_element(By.CSS_SELECTOR, "section[data-panel=Dataset] a[href$='/profile/']")
    assert link.get_attribute("href").endswith(f"/api/v1/datasets/{dataset.pk}/profile/")
