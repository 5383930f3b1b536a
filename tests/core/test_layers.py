"""Dependencies point down, and no import hides a cycle.

The allowed direction (docs/architecture.md, "Layers"):

    project (settings, urls, asgi)
      -> domain apps: apps.datasets, apps.mail, apps.tracing   (none imports another)
      -> apps.control (the ledger, API and console; domain apps register console panels into it)
      -> apps.core (the foundation: publish path, consumer, beat, health, and the demo/schedule registries)
      -> project.celery (the Celery app), project.topology (queue names): imported by all, import no app

A layer may import any layer below it, never one above. Core and control learn about the domain apps only
through what each app registers from its AppConfig.ready() (schedules, demo jobs, console panels).

Checked on the source (ast), so an import inside a function counts as much as one at the top, and a dotted
path in a string (symbol_by_name, import_module) counts too. Also checked: no import inside a function
closes an import cycle (that is what such an import would be hiding), the module-level imports have no
cycle, no service takes a Celery task, and every task published by its name is registered in any Django
process (so the message carries the task's own options, as a direct call would).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from project.celery import app

ROOT = Path(settings.BASE_DIR)
DOMAIN = ("apps.datasets", "apps.mail", "apps.tracing")
# Package -> the project packages it must not import (from the layer order above).
FORBIDDEN = {
    "project.celery": ("apps",),  # names core's Celery classes as "module:Class" strings, resolved by Celery
    "project.topology": ("apps",),
    "apps.core": ("apps.control", *DOMAIN),
    "apps.control": DOMAIN,
    **{app_: tuple(other for other in DOMAIN if other != app_) for app_ in DOMAIN},
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (longest project module the import names)
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    paths = [*ROOT.glob("apps/**/*.py"), *ROOT.glob("project/**/*.py")]
    return {_module_name(p): p for p in paths if "migrations" not in p.parts}


MODULES = _project_modules()


def _resolve(dotted: str) -> str | None:
    """The project module a dotted name refers to (``apps.core.demo.register`` -> ``apps.core.demo``)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


def _imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text())
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for name in _imported_names(node):
            target = _resolve(name)
            if target and target != module and Import(module, target, node.lineno, in_function) not in found:
                found.append(Import(module, target, node.lineno, in_function))
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


IMPORTS = [i for module in MODULES for i in _imports(module)]
TOP_LEVEL: dict[str, set[str]] = {}
for _i in IMPORTS:
    if not _i.in_function:
        TOP_LEVEL.setdefault(_i.source, set()).add(_i.target)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _forbidden(source: str, target: str) -> bool:
    return any(target == f or target.startswith(f + ".") for f in FORBIDDEN.get(_package(source), ()))


def _where(i: Import) -> str:
    return f"{MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}" + (
        " (inside a function)" if i.in_function else "")


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(TOP_LEVEL.get(module, ()))
    return seen


def _strings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [_where(i) for i in IMPORTS if _forbidden(i.source, i.target)]
    assert not wrong, "imports against the layer order (see this module's docstring):\n" + "\n".join(wrong)


def test_core_names_no_app_above_it_in_strings_either():
    """A dotted path (symbol_by_name, import_module) or a task name of an app above core is the same
    dependency as an import: core's registries are how those apps reach it."""
    above = FORBIDDEN["apps.core"]
    domain_tasks = {name for name in app.tasks if name.split(".")[0] in {p.split(".")[1] for p in above}}
    wrong = []
    for module, path in MODULES.items():
        if _package(module) != "apps.core":
            continue
        for node in _strings(ast.parse(path.read_text())):
            if re.match(r"(%s)\b" % "|".join(re.escape(p) for p in above), node.value) or node.value in domain_tasks:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} names {node.value!r}")
    assert not wrong, "\n".join(wrong)


def test_no_import_inside_a_function_hides_a_cycle():
    """An import placed in a function because the module it names imports this one (at the top, directly
    or through others) is a cycle moved out of sight: fix the direction instead."""
    hiding = [_where(i) for i in IMPORTS if i.in_function and i.source in _reachable(i.target)]
    assert not hiding, "\n".join(hiding)


def test_module_level_imports_have_no_cycle():
    cycles = [f"{m} -> {t} -> ... -> {m}" for m, targets in TOP_LEVEL.items() for t in targets
              if m in _reachable(t)]
    assert not cycles, "\n".join(sorted(cycles))


def test_no_service_takes_a_celery_task():
    """Services take plain values (and a progress callback); tasks.py adapts the Celery side."""
    wrong = []
    for module, path in MODULES.items():
        if not module.endswith((".services", ".selectors", ".pipeline")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                if {"task", "self_task", "request"} & set(names):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({', '.join(names)})")
    assert not wrong, "\n".join(wrong)


def test_tasks_published_by_name_are_registered_in_every_django_process():
    """Services publish their app's tasks by pinned name (importing tasks.py back would be a cycle). Found
    in this process's registry, the call goes through the task's own apply_async (its time limits in the
    message, the single-publish path); unregistered, Celery would fall back to send_task without them.
    Checked without the worker's task autodiscovery: the apps' ready() must have registered them."""
    published = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("signature", "send_task") and node.args:
                published += [(path, s) for s in _strings(node.args[0])]
    assert published, "no task published by name found: the check looks for app.signature('name', ...)"
    missing = [f"{path.relative_to(ROOT)}:{s.lineno} publishes {s.value!r}" for path, s in published
               if s.value not in app.tasks]
    assert not missing, "\n".join(missing)


def test_the_checks_see_a_forbidden_import_inside_a_function(tmp_path):
    """The ast walk counts imports in functions, as in the code this test was written against
    (apps/core/demo.py imported the domain apps' probe tasks inside a function)."""
    source = "def probes():\n    from apps.datasets.tasks import probe\n    return probe\n"
    module = "apps.core._layers_probe"
    MODULES[module] = tmp_path / "probe.py"
    MODULES[module].write_text(source)
    try:
        found = _imports(module)
    finally:
        del MODULES[module]
    assert [(i.target, i.in_function) for i in found] == [("apps.datasets.tasks", True)]
    assert _forbidden(module, found[0].target)
