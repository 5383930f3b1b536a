"""The console's HTTP side: the page, the task page and the actions (POST forms, CSRF-protected).

Reads go through the selectors, writes through apps/control/services.py: the same functions, with the
same audit rows, as the HTTP API and the admin. Only staff see any of it (the admin login)."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import redirect, render
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_POST

from apps.control import selectors, services, states
from apps.control.console import extensions
from apps.control.errors import ControlError
from apps.control.models import DeadLetter, TaskRecord
from apps.control.serializers import TaskSerializer
from project import topology

LIST_LIMIT = 100


def _when(value: str):
    return parse_datetime(value) if value else None


def _dead_letters(request) -> tuple[list, dict, str]:
    """Stored dead letters (not replayed) matching the page's filters; drains <queue>.dead first."""
    filters = {key: request.GET.get(f"dl_{key}", "").strip() for key in ("queue", "reason", "task", "since", "until")}
    problem = ""
    try:
        services.refresh_dead_letters()
    except Exception as exc:  # noqa: BLE001  (the stored ones still show; the page says why it is stale)
        problem = f"unavailable: {exc}"
    qs = selectors.dead_letters_matching(queues=[filters["queue"]] if filters["queue"] else None,
                                         reasons=[filters["reason"]] if filters["reason"] else None)
    qs = qs.filter(replayed_at__isnull=True)
    if filters["task"]:
        qs = qs.filter(task_name__icontains=filters["task"]) | qs.filter(task_id=filters["task"])
    if _when(filters["since"]):
        qs = qs.filter(dead_at__gte=_when(filters["since"]))
    if _when(filters["until"]):
        qs = qs.filter(dead_at__lt=_when(filters["until"]))
    return list(qs[:LIST_LIMIT]), filters, problem


def _search(request) -> tuple[list | None, dict]:
    """Task search over the ledger by id, name, state, queue and time; None when nothing was asked."""
    params = {key: request.GET.get(key, "").strip() for key in ("id", "name", "state", "queue", "since", "until")}
    if not any(params.values()):
        return None, params
    qs = TaskRecord.objects.all()
    if params["id"]:
        qs = qs.filter(task_id__startswith=params["id"])
    if params["name"]:
        qs = qs.filter(name__icontains=params["name"])
    if params["state"]:
        qs = qs.filter(state=params["state"])
    if params["queue"]:
        qs = qs.filter(queue=params["queue"])
    if _when(params["since"]):
        qs = qs.filter(sent_at__gte=_when(params["since"]))
    if _when(params["until"]):
        qs = qs.filter(sent_at__lt=_when(params["until"]))
    return list(qs[:LIST_LIMIT]), params


@staff_member_required
def console(request):
    letters, letter_filters, letters_problem = _dead_letters(request)
    found, search = _search(request)
    return render(request, "control/console/index.html", {
        "title": "Operator console", "letters": letters, "letter_filters": letter_filters,
        "letters_problem": letters_problem, "reasons": DeadLetter.REASONS, "queues": [l.name for l in topology.LANES],
        "states": states.ALL, "found": found, "search": search, "list_limit": LIST_LIMIT,
    })


@staff_member_required
def task(request, task_id):
    # Right after enqueue the recorder may not have written the row yet: the page waits for the task's events
    # (its socket follows the id) instead of answering 404.
    record = TaskRecord.objects.filter(task_id=task_id).first() or TaskRecord(task_id=task_id, state="")
    return render(request, "control/console/task.html", {
        "title": f"{record.name or 'task'} {record.task_id}", "task": TaskSerializer(record).data,
        "record": record, "panels": extensions.task_panels(record) if record.pk else [],
        "final": record.state in states.TERMINAL,
        "retries_of": TaskRecord.objects.filter(retry_of=record.task_id).values_list("task_id", flat=True)[:20],
    })


def _act(request, action, done: str = "") -> None:
    try:
        action()
        if done:
            messages.success(request, done)
    except ControlError as exc:
        messages.error(request, exc.message)
    except Exception as exc:  # noqa: BLE001  (a broker hiccup is a message on the page, not a 500)
        messages.error(request, f"unavailable: {exc}")


@require_POST
@staff_member_required
def pause(request, name):
    _act(request, lambda: services.pause_queue(name, actor=request.user, reason=request.POST.get("reason", "")),
         f"queue {name} paused")
    return redirect("console")


@require_POST
@staff_member_required
def resume(request, name):
    _act(request, lambda: services.resume_queue(name, actor=request.user), f"queue {name} resumed")
    return redirect("console")


@require_POST
@staff_member_required
def dead_letters(request):
    ids = [int(i) for i in request.POST.getlist("ids") if i.isdigit()]
    back = request.POST.get("next", "")
    target = f"/console/?{back}#dead-letters" if back else "/console/#dead-letters"
    if not ids:
        messages.error(request, "select at least one dead letter")
        return redirect(target)
    letters = DeadLetter.objects.filter(id__in=ids)
    if request.POST.get("action") == "purge":
        _act(request, lambda: services.purge_dead_letters(letters, actor=request.user, filters={"ids": ids}),
             f"purged {len(ids)} dead letter(s)")
    else:
        def replay():
            outcome = services.replay_dead_letters(list(letters), actor=request.user)
            for skip in outcome["skipped"]:
                messages.warning(request, f"dead letter {skip['id']}: {skip['reason']}")
            messages.success(request, f"replayed {len(outcome['replayed'])}, skipped {len(outcome['skipped'])}")

        _act(request, replay)
    return redirect(target)
