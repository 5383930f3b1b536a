"""Render compose/kubernetes/ the way `kustomize build` does, for the features those files use.

No kustomize binary comes from Debian or PyPI (Debian's kubectl is 1.20 with a kustomize too old for
`labels` and `patches`), so the tests render in Python. Supported, and refused otherwise: resources
(files and directories with a kustomization.yaml), namespace, labels (metadata only), images,
generatorOptions.disableNameSuffixHash, secretGenerator from env files, and patches whose bodies are maps
only (where strategic-merge and JSON-merge patching give the same result). On a machine with kubectl
the output was compared with `kubectl kustomize` (docs/operations.md says which version).
"""
from __future__ import annotations

import base64
import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "generatorOptions",
             "secretGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def read_env_file(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, list):
            raise ValueError(f"patch sets a list at {key!r}: list merging differs between patch kinds")
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def containers(resource: dict) -> list[dict]:
    spec = resource.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else {}
    return pod.get("containers", []) + pod.get("initContainers", [])


def build(directory: Path, env_files: dict[str, Path] | None = None) -> list[dict]:
    """Render the kustomization in ``directory``; ``env_files`` maps an env file name to the file to read
    instead (the committed *.example for a secrets file that is never committed)."""
    env_files = env_files or {}
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not support: {sorted(unknown)}")

    resources: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += build(path, env_files) if path.is_dir() else load_documents(path)

    hashed = not kustomization.get("generatorOptions", {}).get("disableNameSuffixHash", False)
    for generator in kustomization.get("secretGenerator", []):
        if hashed:
            raise ValueError("hashed generator names are not supported: set disableNameSuffixHash")
        data = {}
        for name in generator.get("envs", []):
            data.update(read_env_file(env_files.get(name, directory / name)))
        resources.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                          "metadata": {"name": generator["name"]},
                          "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    for patch in kustomization.get("patches", []):
        for body in load_documents(directory / patch["path"]):
            [target] = [r for r in resources if r["kind"] == body["kind"]
                        and r["metadata"]["name"] == body["metadata"]["name"]]
            merge(target, {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")})

    for image in kustomization.get("images", []):
        for resource in resources:
            for container in containers(resource):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"

    for labels in kustomization.get("labels", []):
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(labels["pairs"])

    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources
