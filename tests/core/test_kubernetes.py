"""compose/kubernetes/: validated offline (no cluster runs here) and kept consistent with the code.

Built-in kinds are validated against the Kubernetes JSON schemas that the pinned kubernetes-validate wheel
ships (strict: an unknown field is an error); ScaledObject, TriggerAuthentication and RabbitmqCluster
against the operators' CRD schemas kept in compose/kubernetes/schemas/ (SOURCES.md). The production
overlay is rendered by tests/support/kustomize.py.
"""
import copy
import functools
import hashlib
import os
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from django.conf import settings

from apps.core import probes, shutdown
from project import topology
from project.celery import app
from tests.support.kustomize import build, containers, load_documents, read_env_file

ROOT = Path(settings.BASE_DIR)
KUBE = ROOT / "compose" / "kubernetes"
OVERLAY = KUBE / "overlays" / "production"
SCHEMAS = KUBE / "schemas"
KUBERNETES_VERSION = "1.33.0"
ROLES = ("web", "cpu", "io", "beat", "recorder", "flower")
WORKER_ROLES = tuple(topology.ROLES)
UID = 10001  # compose/Dockerfile: useradd --uid 10001

# The trigger metadata KEDA v2.20.2's RabbitMQ scaler reads (pkg/scalers/rabbitmq_scaler.go, rabbitMQMetadata,
# order=triggerMetadata); anything else in a trigger's metadata is ignored by KEDA, i.e. a typo.
KEDA_RABBITMQ_METADATA = {"queueName", "mode", "queueLength", "value", "activationValue", "host", "protocol",
                          "vhostName", "useRegex", "excludeUnacknowledged", "pageSize", "operation", "timeout",
                          "unsafeSsl", "hostFromEnv", "usernameFromEnv", "passwordFromEnv"}
# Variables read by something other than the settings, on purpose.
READ_ELSEWHERE = {"DJANGO_SETTINGS_MODULE": "Django itself (the Dockerfile sets the same value)"}


@functools.cache
def _rendered() -> tuple[dict, ...]:
    return tuple(build(OVERLAY, {name: OVERLAY / f"{name}.example" for name in ("secrets.env", "keda.env")}))


def rendered() -> list[dict]:
    """The production overlay, rendered once per session; a fresh copy per call (tests mutate it)."""
    return copy.deepcopy(list(_rendered()))


def by_kind(resources, kind) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


@functools.cache
def crd_schemas() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> a strict validator of its openAPIV3Schema, from the CRDs kept in the repository."""
    schemas = {}
    for path in SCHEMAS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = \
                jsonschema.Draft4Validator(schema)  # OpenAPI v3 schemas are close to draft 4
    return schemas


def strict(schema):
    """An unknown field is an error, as `kubectl apply` (field validation Strict) makes it for a CRD."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def validate(resource: dict, crds: dict) -> None:
    key = (resource["apiVersion"], resource["kind"])
    if key in crds:
        crds[key].validate(resource)
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_every_manifest_parses_and_validates_offline():
    crds = crd_schemas()
    files = sorted(KUBE.rglob("*.yaml"))
    checked = 0
    for path in files:
        if path.parent == SCHEMAS or path.name == "kustomization.yaml":
            continue
        for resource in load_documents(path):
            validate(resource, crds)
            checked += 1
    for resource in rendered():
        validate(resource, crds)
        checked += 1
    kinds = {r["kind"] for r in rendered()}
    assert {"Deployment", "Job", "ConfigMap", "Secret", "Service", "PodDisruptionBudget", "PersistentVolumeClaim",
            "RabbitmqCluster", "ScaledObject", "TriggerAuthentication", "Namespace"} <= kinds
    assert checked > 40


def test_the_validators_reject_what_a_cluster_would():
    crds = crd_schemas()
    resources = rendered()
    broken = copy.deepcopy(by_kind(resources, "ScaledObject")["platform-cpu"])
    broken["spec"]["minReplicaCount"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, crds)
    broken = copy.deepcopy(by_kind(resources, "RabbitmqCluster")["platform-rabbitmq"])
    broken["spec"]["replica"] = 3  # a typo: unknown field
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, crds)
    broken = copy.deepcopy(by_kind(resources, "Deployment")["platform-cpu"])
    pod_spec(broken)["containers"][0]["livenessProbe"]["exec"]["cmd"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, crds)


def test_crd_schemas_are_the_upstream_files_their_sources_name():
    sources = (SCHEMAS / "SOURCES.md").read_text()
    files = sorted(path.name for path in SCHEMAS.glob("*.yaml"))
    assert files == ["keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml",
                     "rabbitmq.com_rabbitmqclusters.yaml"]
    for name in files:
        digest = hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest()
        assert re.search(rf"\| {re.escape(name)} \|.*\| {digest} \|", sources), f"{name}: sha256 not in SOURCES.md"


def test_production_overlay_renders_every_role_in_its_namespace_with_the_built_image():
    resources = rendered()
    deployments = by_kind(resources, "Deployment")
    assert set(deployments) == {f"platform-{role}" for role in ROLES}
    assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {"task-platform"}
    images = {c["image"] for r in resources for c in containers(r)}
    assert images == {"registry.example.com/task-platform:1.0.0"}


def test_no_secret_value_is_committed():
    ignored = (OVERLAY / ".gitignore").read_text().split()
    assert {"secrets.env", "keda.env"} <= set(ignored)
    secrets = read_env_file(OVERLAY / "secrets.env.example")
    assert set(secrets) >= {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "FLOWER_BASIC_AUTH"}
    assert all(value == "" for value in secrets.values())
    assert "<password>" in read_env_file(OVERLAY / "keda.env.example")["host"]
    for path in KUBE.rglob("*.yaml"):
        if path.parent == SCHEMAS:
            continue
        for resource in load_documents(path):
            assert resource["kind"] != "Secret", f"{path}: a Secret with values in the repository"
    config = by_kind(rendered(), "ConfigMap")["platform-config"]["data"]
    assert not set(config) & set(secrets), "a secret key in the ConfigMap"


def test_every_container_runs_an_existing_start_script_of_its_role():
    resources = rendered()
    commands = {}
    for resource in resources:
        for container in containers(resource):
            [command] = container["command"]
            script = ROOT / command.removeprefix("/app/")
            assert command.startswith("/app/compose/start/") and script.is_file() and os.access(script, os.X_OK), command
            commands[resource["metadata"]["name"]] = script.name
    assert commands == {**{f"platform-{role}": role for role in ROLES}, "platform-migrate": "migrate"}


def manifest_env_names(resources) -> set[str]:
    names = set(by_kind(resources, "ConfigMap")["platform-config"]["data"])
    names |= set(read_env_file(OVERLAY / "secrets.env.example"))
    for resource in resources:
        for container in containers(resource):
            names |= {item["name"] for item in container.get("env", [])}
    return names


def test_every_environment_variable_a_manifest_sets_is_read_by_the_settings_or_a_start_script():
    readers = "\n".join(path.read_text() for path in (ROOT / "project" / "settings").glob("*.py"))
    scripts = "\n".join(path.read_text() for path in (ROOT / "compose" / "start").iterdir())
    unread = set()
    for name in manifest_env_names(rendered()) - set(READ_ELSEWHERE):
        if f'"{name}"' not in readers and f"${{{name}" not in scripts:
            unread.add(name)
    assert not unread, f"set by a manifest, read by nothing: {sorted(unread)}"


def test_scaled_objects_count_ready_and_unacked_messages_of_the_queues_the_topology_gives_each_role():
    resources = rendered()
    scaled = by_kind(resources, "ScaledObject")
    assert {so["spec"]["scaleTargetRef"]["name"] for so in scaled.values()} == {f"platform-{r}" for r in WORKER_ROLES}
    for so in scaled.values():
        role = so["spec"]["scaleTargetRef"]["name"].removeprefix("platform-")
        assert so["spec"]["minReplicaCount"] >= 1 and so["spec"]["maxReplicaCount"] > so["spec"]["minReplicaCount"]
        queues = []
        for trigger in so["spec"]["triggers"]:
            metadata = trigger["metadata"]
            assert trigger["type"] == "rabbitmq"
            assert set(metadata) <= KEDA_RABBITMQ_METADATA, set(metadata) - KEDA_RABBITMQ_METADATA
            assert metadata["protocol"] == "http" and metadata["mode"] == "QueueLength"
            assert metadata["excludeUnacknowledged"] == "false"  # unacked = prefetched or running: still work
            assert trigger["authenticationRef"]["name"] in by_kind(resources, "TriggerAuthentication")
            queues.append(metadata["queueName"])
        assert sorted(queues) == sorted(topology.ROLES[role]["queues"]), role
    auth = by_kind(resources, "TriggerAuthentication")["platform-rabbitmq-http"]
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["key"] in read_env_file(OVERLAY / f"{ref['name'].removeprefix('platform-')}.env.example")


def test_beat_and_the_recorder_run_exactly_one_replica_and_are_never_scaled():
    resources = rendered()
    deployments = by_kind(resources, "Deployment")
    scaled = {so["spec"]["scaleTargetRef"]["name"] for so in by_kind(resources, "ScaledObject").values()}
    scaled |= {hpa["spec"]["scaleTargetRef"]["name"] for hpa in by_kind(resources, "HorizontalPodAutoscaler").values()}
    for role in ("beat", "recorder"):
        deployment = deployments[f"platform-{role}"]
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"  # no surge: never two during a rollout
        assert f"platform-{role}" not in scaled


def longest_hard_time_limit(role: str) -> float:
    app.loader.import_default_modules()
    queues = topology.ROLES[role]["queues"]
    limits = [app.tasks[name].time_limit or settings.CELERY_TASK_TIME_LIMIT for name in app.tasks
              if app.amqp.router.route({}, name)["queue"].name in queues]
    if topology.DATASET in queues:  # dataset tasks get theirs per call (apps/datasets/services.time_limits_for)
        limits.append(max(settings.DATASETS_TIME_LIMIT, settings.DATASETS_SOFT_TIME_LIMIT + 30))
    return max(limits)


@pytest.mark.parametrize("role", WORKER_ROLES)
def test_termination_grace_comes_from_the_role_shutdown_window_which_covers_its_task_time_limits(role):
    deployment = by_kind(rendered(), "Deployment")[f"platform-{role}"]
    window = topology.ROLES[role]["soft_shutdown_seconds"]
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == topology.termination_grace_seconds(role)
    assert topology.termination_grace_seconds(role) > window
    # A stuck shutdown exits by itself, with its stacks in the log, before the kubelet's SIGKILL.
    assert window + shutdown.SHUTDOWN_OVERRUN_SECONDS < topology.termination_grace_seconds(role)
    # Every task the role runs can end within its own hard limit inside the window.
    assert window >= longest_hard_time_limit(role)
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())["services"][role]
    assert compose["stop_grace_period"] == f"{topology.termination_grace_seconds(role)}s"  # docker stop too
    script = (ROOT / "compose" / "start" / role).read_text()
    assert 'REMAP_SIGTERM="${REMAP_SIGTERM:-SIGQUIT}"' in script and f"PLATFORM_WORKER_ROLE={role}" in script


def test_probes_read_the_files_the_bootstep_writes_where_the_pod_mounts_them():
    resources = rendered()
    probe_dir = by_kind(resources, "ConfigMap")["platform-config"]["data"]["PLATFORM_PROBE_DIR"]
    script = (ROOT / "compose" / "probes" / "worker").read_text()
    assert f'"$dir/{probes.HEARTBEAT_FILE}"' in script and f'"$dir/{probes.READY_FILE}"' in script
    for role in WORKER_ROLES:
        spec = pod_spec(by_kind(resources, "Deployment")[f"platform-{role}"])
        [container] = spec["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts[probe_dir]], f"{role}: {probe_dir} is not a writable emptyDir"
        for probe, what in (("livenessProbe", "live"), ("readinessProbe", "ready"), ("startupProbe", "ready")):
            command = container[probe]["exec"]["command"]
            assert command == ["/app/compose/probes/worker", what], (role, probe)
            assert os.access(ROOT / command[0].removeprefix("/app/"), os.X_OK)
        # The probe's own grace period: a wedged worker does not get the long shutdown window.
        assert container["livenessProbe"]["terminationGracePeriodSeconds"] < topology.termination_grace_seconds(role)


def test_every_pod_runs_as_the_image_user_with_a_read_only_root_filesystem():
    for resource in rendered():
        if "template" not in resource.get("spec", {}):
            continue
        spec = resource["spec"]["template"]["spec"]
        name = resource["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == UID, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"], name
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, f"{name}: no writable /tmp"
    assert f"--uid {UID}" in (ROOT / "compose" / "Dockerfile").read_text()


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_every_container_has_requests_and_limits_that_cover_the_measured_rss():
    deployments = by_kind(rendered(), "Deployment")
    for resource in rendered():
        for container in containers(resource):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
            assert mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])
    # docs/benchmarks.md (soak) and docs/datasets.md: the figures the requests are sized from.
    measured = {"cpu": 188 + 2 * 282, "io": 191}
    for role, rss in measured.items():
        [container] = pod_spec(deployments[f"platform-{role}"])["containers"]
        assert mebibytes(container["resources"]["requests"]["memory"]) >= rss, role


def test_every_disruption_budget_selects_pods_that_exist():
    resources = rendered()
    pod_labels = [r["spec"]["template"]["metadata"]["labels"] for r in resources if "template" in r.get("spec", {})]
    pod_labels.append({"app.kubernetes.io/name": "platform-rabbitmq"})  # the operator labels its pods so
    budgets = by_kind(resources, "PodDisruptionBudget")
    assert set(budgets) == {"platform-web", "platform-cpu", "platform-io", "platform-rabbitmq"}
    for budget in budgets.values():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), budget["metadata"]["name"]
    assert by_kind(resources, "RabbitmqCluster")["platform-rabbitmq"]["spec"]["replicas"] == 3


def test_rabbitmq_notices_a_lost_peer_within_a_client_heartbeat():
    """A partitioned node is declared down after up to 1.25 x net_ticktime, and surviving nodes nack
    publishes to the queues it led 7 s after each until then: a partition's stall stays within two client
    heartbeats when 1.25 x net_ticktime + 7 s does (measured, docs/reliability.md). Erlang's default (60 s)
    would not."""
    spec = by_kind(rendered(), "RabbitmqCluster")["platform-rabbitmq"]["spec"]
    ticktime = re.search(r"\{net_ticktime,\s*(\d+)\}", spec["rabbitmq"].get("advancedConfig", ""))
    assert ticktime, "the RabbitmqCluster sets no net_ticktime (Erlang's default is 60 s)"
    assert int(ticktime.group(1)) <= settings.CELERY_BROKER_HEARTBEAT
    assert 1.25 * int(ticktime.group(1)) + 7 <= 2 * settings.CELERY_BROKER_HEARTBEAT
