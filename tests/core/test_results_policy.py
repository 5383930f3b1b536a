"""The results policy (docs/architecture.md) and the code agree: every platform task has a row, and a row
that says a task stores no result matches the task's ``ignore_result``. A new task without a decision
fails here."""
import re

from project.celery import app
from tests.support.workers import ROOT


def policy_rows() -> dict[str, str]:
    """{task name: the 'result stored' cell} from the policy table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Results policy"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] not in ("result stored", "---"):
            names = re.findall(r"`([\w.]+)`", cells[0])
            prefix = names[0].rsplit(".", 1)[0] if names else ""
            for name in names:  # "`datasets.start_import`, `profile_chunk`" names siblings by their short name
                rows[name if "." in name else f"{prefix}.{name}"] = cells[1]
    return rows


def platform_tasks() -> dict:
    app.loader.import_default_modules()
    return {name: task for name, task in app.tasks.items()
            if not name.startswith(("tests.", "bench.")) and (not name.startswith("celery.") or name == "celery.backend_cleanup")}


def test_every_platform_task_has_a_decided_results_policy():
    rows, tasks = policy_rows(), platform_tasks()
    assert len(rows) >= 15
    assert sorted(set(tasks) - set(rows)) == [], "tasks without a row in docs/architecture.md's results policy"
    assert sorted(set(rows) - set(tasks)) == [], "rows for tasks that do not exist"


def test_tasks_the_policy_says_store_nothing_ignore_their_result():
    rows, tasks = policy_rows(), platform_tasks()
    decided_per_task = {name for name, cell in rows.items() if "on publish" not in cell}
    for name in decided_per_task:
        assert tasks[name].ignore_result == rows[name].startswith("no"), (name, rows[name])
