"""Celery, kombu and py-amqp private names are used in apps/core/compat.py only (CONVENTIONS: "compatibility
module"), where each has its reason and a test that breaks when an upgrade moves it (tests/core/test_compat.py).

A private name is one with a leading underscore that is not a dunder. Everywhere else under apps/ and project/
(migrations aside: generated), this fails on:
* ``obj._name`` where ``obj`` is not ``self``/``cls`` (``super()._name`` included: an override of a private
  method);
* ``from some.module import _name`` from outside the platform;
* ``getattr/setattr/hasattr/delattr(obj, "_name")`` on an object other than ``self``/``cls``;
and, private or not, on an assignment to an attribute of a module or class imported from Celery, kombu or
py-amqp (``loops.synloop = ...``, ``setattr(Consumer, ...)``): a patch, which belongs in compat.py too;
unless the use is in an allowlist below, each entry saying why it is not a Celery/kombu/py-amqp internal.
A platform class that subclasses a Celery/kombu/py-amqp class may not reach their private names through
``self``/``cls`` either: neither override one (``def _create_task_sender``) nor read one
(``self._dump_pydantic_arguments``); that check imports the modules that define such classes.
"""
import ast
import importlib
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("apps", "project")
COMPAT = Path("apps/core/compat.py")

# Private-looking names that are public API of what they are used on, allowed on any object.
ANY_OBJECT = {
    "_meta": "Django's documented Model._meta API",
    "_replace": "namedtuple's documented API (Celery's task_message is a namedtuple)",
}

# Private names of the standard library, on the module itself: (module name as written, attribute).
STDLIB = {
    ("os", "_exit"): "exit without running handlers (apps/core/shutdown.py): documented in os",
    ("smtplib", "_quote_periods"): "smtplib's dot-stuffing of DATA (apps/mail/smtp.py): stdlib, not a task library",
}

# The platform's own private attributes on its own objects: (file, receiver as written, attribute).
PLATFORM_OWN = {
    ("apps/mail/smtp.py", "pool", "_open"): "apps.mail.smtp.ConnectionPool, defined in that module",
}

# Attributes the platform itself sets on library objects (a producer cached on a kombu connection): its own
# names, under its own prefix, never the library's.
PLATFORM_PREFIX = "_platform_"

# Libraries whose modules and classes are patched only in compat.py.
TASK_LIBRARIES = ("celery", "kombu", "amqp", "billiard", "vine")

# Assignments to a library module's attribute that are its public state, not a patch: (file, target).
LIBRARY_STATE = {
    ("apps/core/shutdown.py", "state.should_stop"): "celery.worker.state's public flag, set the way Celery's own "
    "signal handlers ask for a warm shutdown (celery/apps/worker.py); tests/core/test_graceful_shutdown.py",
}

# Modules whose private names may be imported: the platform's own.
PLATFORM_PACKAGES = ("apps", "project")

# Private names imported from other libraries than Celery, kombu and py-amqp: (module, name).
OTHER_LIBRARIES = {
    ("opentelemetry.context", "_SUPPRESS_INSTRUMENTATION_KEY"): "OpenTelemetry's context key that its own "
    "instrumentations read to stay quiet (apps/tracing/otel.py): not a task-library internal",
}



def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _source(node: ast.AST) -> str:
    return ast.unparse(node)


def _allowance(path: str, receiver: ast.AST, name: str):
    """The allowlist entry that permits ``receiver._name`` in ``path`` (True for self/cls), or None."""
    if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
        return True
    if name.startswith(PLATFORM_PREFIX):
        return PLATFORM_PREFIX
    for key, allowlist in ((name, ANY_OBJECT), ((_source(receiver), name), STDLIB),
                           ((path, _source(receiver), name), PLATFORM_OWN)):
        if key in allowlist:
            return key
    return None


def _library_names(tree: ast.Module) -> set[str]:
    """Names the module binds to a Celery/kombu/py-amqp module or class (``import kombu``, ``from x import y``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names
                         if a.name.split(".")[0] in TASK_LIBRARIES)
        elif (isinstance(node, ast.ImportFrom) and node.level == 0
              and (node.module or "").split(".")[0] in TASK_LIBRARIES):
            names.update(a.asname or a.name for a in node.names)
    return names


def _patched(target: ast.AST, library: set[str]) -> bool:
    """Whether assigning to ``target`` changes an attribute of a library module or class."""
    if not isinstance(target, ast.Attribute):
        return False
    base = target.value
    while isinstance(base, ast.Attribute):
        base = base.value
    return isinstance(base, ast.Name) and base.id in library


def private_uses(path: str, source: str, used: set | None = None) -> list[str]:
    """``file:line name`` for every private name ``source`` uses, and every patch of a Celery/kombu/py-amqp
    module or class it makes, outside the allowlists; the allowlist entries that permitted others go to
    ``used``."""
    found = []
    used = set() if used is None else used

    def allowed(receiver, name) -> bool:
        key = _allowance(path, receiver, name)
        used.add(key)
        return key is not None

    def listed(key, allowlist) -> bool:
        used.add(key)
        return key in allowlist

    tree = ast.parse(source, filename=path)
    library = _library_names(tree)
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for target in targets:
            if _patched(target, library) and not listed((path, _source(target)), LIBRARY_STATE):
                found.append((node.lineno, f"patch {_source(target)} = ..."))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
                and node.args and _patched(ast.Attribute(value=node.args[0], attr="x"), library)):
            found.append((node.lineno, f"patch {node.func.id}({_source(node.args[0])}, ...)"))
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            if not allowed(node.value, node.attr):
                found.append((node.lineno, f"{_source(node.value)}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if (node.module or "").split(".")[0] in PLATFORM_PACKAGES:
                continue
            for alias in node.names:
                if _is_private(alias.name) and not listed((node.module, alias.name), OTHER_LIBRARIES):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _is_private(node.args[1].value)):
            if not allowed(node.args[0], node.args[1].value):
                found.append((node.lineno, f"{node.func.id}({_source(node.args[0])}, {node.args[1].value!r})"))
    return [f"{path}:{line} {name}" for line, name in sorted(found)]


def scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == COMPAT or "migrations" in relative.parts:
                continue
            files.append(relative)
    return files


def test_no_private_celery_kombu_or_amqp_name_outside_the_compatibility_module():
    files = scanned_files()
    assert Path("apps/core/consumer.py") in files and Path("project/celery.py") in files  # the scan sees the code
    used = set()
    uses = [use for path in files for use in private_uses(path.as_posix(), (ROOT / path).read_text(), used)]
    assert not uses, (
        "private names outside apps/core/compat.py (move each into compat.py with its reason and a test, or, "
        "if it is not a Celery/kombu/py-amqp internal, allowlist it here with why):\n  " + "\n  ".join(uses))
    entries = [*ANY_OBJECT, *STDLIB, *PLATFORM_OWN, PLATFORM_PREFIX, *LIBRARY_STATE, *OTHER_LIBRARIES]
    unused = [entry for entry in entries if entry not in used]
    assert not unused, f"allowlist entries no code needs any more (remove them): {unused}"


def test_the_guard_catches_the_shapes_it_is_meant_to():
    source = (
        "from celery.worker import loops\n"
        "from kombu.transport.native_delayed_delivery import _delay_prefix_re\n"
        "dispatcher = app.amqp._event_dispatcher\n"
        "loops._quick_drain = None\n"
        "app._local = None\n"
        "send = super()._create_task_sender()\n"
        "getattr(connection, '_connection', None)\n"
        "self._mine = cls._ours = self.__dict__ = Model._meta = message._replace(body=1)\n"
        "connection._platform_event_producer = None\n"
        "os._exit(3)\n"
        "loops.synloop = None\n"
        "setattr(loops, 'synloop', None)\n"
        "app.conf.result_backend_thread_safe = True\n"
    )
    assert private_uses("apps/example.py", source) == [
        "apps/example.py:2 from kombu.transport.native_delayed_delivery import _delay_prefix_re",
        "apps/example.py:3 app.amqp._event_dispatcher",
        "apps/example.py:4 loops._quick_drain",
        "apps/example.py:4 patch loops._quick_drain = ...",
        "apps/example.py:5 app._local",
        "apps/example.py:6 super()._create_task_sender",
        "apps/example.py:7 getattr(connection, '_connection')",
        "apps/example.py:11 patch loops.synloop = ...",
        "apps/example.py:12 patch setattr(loops, ...)",
    ]
    # The temporary pubcompat entries cover only their own files.
    assert private_uses("apps/core/events.py", "x = super()._create_task_sender()") == [
        "apps/core/events.py:1 super()._create_task_sender"]


def library_privates_of_subclasses(path: Path) -> list[str]:
    """``file:line Class._name`` for each private name that a class of ``path`` subclassing a Celery/kombu/py-amqp
    class defines or reads through ``self``/``cls``, and that one of those library classes has."""
    tree = ast.parse((ROOT / path).read_text())
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.bases]
    if not classes:
        return []
    module = importlib.import_module(".".join(path.with_suffix("").parts))
    found = []
    for node in classes:
        cls = getattr(module, node.name, None)
        if not inspect.isclass(cls):
            continue  # a nested class: its outer class is checked
        library = [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in TASK_LIBRARIES]
        names = {name for name in vars(cls) if _is_private(name)} | {
            attribute.attr for attribute in ast.walk(node)
            if isinstance(attribute, ast.Attribute) and _is_private(attribute.attr)
            and isinstance(attribute.value, ast.Name) and attribute.value.id in ("self", "cls")}
        for name in sorted(names):
            owners = [f"{base.__module__}.{base.__qualname__}" for base in library if hasattr(base, name)]
            if owners:
                found.append(f"{path.as_posix()}:{node.lineno} {node.name}.{name} (from {', '.join(owners)})")
    return found


def test_no_platform_subclass_reaches_a_private_name_of_its_library_base():
    found = [use for path in scanned_files() for use in library_privates_of_subclasses(path)]
    assert not found, ("private names of Celery/kombu/py-amqp classes overridden or read by platform subclasses "
                       "(move each into apps/core/compat.py with its reason and a test):\n  " + "\n  ".join(found))


def test_the_subclass_check_catches_an_override_and_a_read(tmp_path, monkeypatch):
    package = tmp_path / "privprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "example.py").write_text(
        "from celery import Task\n"
        "from celery.app.amqp import AMQP\n\n\n"
        "class Mine(AMQP):\n"
        "    def _create_task_sender(self):\n"
        "        return super()._create_task_sender()\n\n\n"
        "class Reads(Task):\n"
        "    _own = None\n\n"
        "    def run(self):\n"
        "        return self._dump_pydantic_arguments, self._own\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert library_privates_of_subclasses(Path("privprobe/example.py")) == [
        "privprobe/example.py:5 Mine._create_task_sender (from celery.app.amqp.AMQP)",
        "privprobe/example.py:10 Reads._dump_pydantic_arguments (from celery.app.task.Task)",
    ]
