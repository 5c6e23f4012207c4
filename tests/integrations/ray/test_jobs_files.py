"""Offline validation of cluster/: launcher YAMLs against Ray's shipped JSON schema, KubeRay and
Kubernetes manifests against the required fields of their kinds, and the fields that make them
work for msdn-tune (CPU-only head, GPU workers from zero, shared storage, driver retries)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from msdn_tune.integrations.ray.storage import DEFAULT_EXCLUDES

CLUSTER = Path(__file__).resolve().parents[3] / "cluster"
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])
SHARED = "/mnt/cluster_storage"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


# --- Ray cluster launcher -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launcher_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_launcher_yaml_matches_rays_schema(name, launcher_schema):
    jsonschema.validate(_load(name), launcher_schema)


def test_the_schema_check_is_not_vacuous(launcher_schema):
    doc = _load("aws-gpu.yaml")
    doc["available_node_types"]["gpu_spot"]["min_wrokers"] = 0  # a typo must be caught
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, launcher_schema)


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_launcher_layout_for_hpo(name):
    doc = _load(name)
    types = doc["available_node_types"]
    head = types[doc["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no trial lands on the driver's node
    workers = [t for k, t in types.items() if k != doc["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu)
    assert doc["max_workers"] >= max(t["max_workers"] for t in gpu)
    # Ray in the image is the version msdn-tune pins.
    assert all(f":{RAY_MINOR}." in doc["docker"][k] for k in ("image", "head_image"))
    # msdn-tune is installed on every node, from the project copied there.
    assert any("pip install" in c and "msdn-tune" in c for c in doc["setup_commands"])
    assert "~/msdn-tune" in doc["file_mounts"]
    assert {".venv", "data", "msdn_results", "mlflow.db"} <= set(doc["rsync_exclude"])
    # Shared results storage on every node, visible inside the containers.
    init = " ".join(doc["initialization_commands"])
    assert "mount -t nfs" in init and SHARED in init
    assert f"-v {SHARED}:{SHARED}" in doc["docker"]["run_options"]
    # The head runs MLflow and a CPU-less Ray; workers join it.
    head_cmds = " ".join(doc["head_start_ray_commands"])
    assert "mlflow server" in head_cmds and "--serve-artifacts" in head_cmds
    assert "MLFLOW_TRACKING_URI=" in head_cmds and "--num-cpus=0" in head_cmds
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_cmds
    assert any("$RAY_HEAD_IP:6379" in c for c in doc["worker_start_ray_commands"])
    # Token auth: one token shipped to every node, the mode set on every `ray start`.
    assert doc["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)


def test_aws_gpu_workers_are_spot():
    doc = _load("aws-gpu.yaml")
    cfg = doc["available_node_types"]["gpu_spot"]["node_config"]
    assert cfg["InstanceMarketOptions"]["MarketType"] == "spot"
    assert doc["provider"]["type"] == "aws"


def test_gcp_gpu_workers_are_preemptible_with_a_gpu():
    doc = _load("gcp-gpu.yaml")
    cfg = doc["available_node_types"]["gpu_preemptible"]["node_config"]
    assert {"preemptible": True} in cfg["scheduling"]
    assert {"onHostMaintenance": "TERMINATE"} in cfg["scheduling"]
    assert cfg["guestAccelerators"][0]["acceleratorCount"] == 1
    meta = {i["key"]: i["value"] for i in cfg["metadata"]["items"]}
    assert meta["install-nvidia-driver"] == "True"
    assert doc["provider"]["type"] == "gcp" and "project_id" in doc["provider"]


# --- Kubernetes / KubeRay: required fields per kind ---------------------------------------------

_CONTAINER = ["name", "image"]
_POD = ["containers[]." + f for f in _CONTAINER]
REQUIRED: dict[str, list[str]] = {
    "RayCluster": ["spec.headGroupSpec.template.spec"]
    + ["spec.headGroupSpec.template.spec." + p for p in _POD]
    + [
        "spec.headGroupSpec.rayStartParams",
        "spec.workerGroupSpecs[].groupName",
        "spec.workerGroupSpecs[].maxReplicas",
        "spec.workerGroupSpecs[].rayStartParams",
    ]
    + ["spec.workerGroupSpecs[].template.spec." + p for p in _POD],
    "RayJob": ["spec.entrypoint", "spec.rayClusterSpec.headGroupSpec.rayStartParams"]
    + ["spec.rayClusterSpec.headGroupSpec.template.spec." + p for p in _POD]
    + [
        "spec.rayClusterSpec.workerGroupSpecs[].groupName",
        "spec.rayClusterSpec.workerGroupSpecs[].maxReplicas",
    ]
    + ["spec.rayClusterSpec.workerGroupSpecs[].template.spec." + p for p in _POD],
    "PersistentVolumeClaim": ["spec.accessModes", "spec.resources.requests.storage"],
    "Deployment": ["spec.selector.matchLabels", "spec.template.metadata.labels"]
    + ["spec.template.spec." + p for p in _POD],
    "Service": ["spec.selector", "spec.ports[].port"],
}
API_VERSIONS = {
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
}


def _values(doc: Any, path: str) -> list[Any]:
    """Every value at a dotted path; `key[]` walks each element of a list. Missing -> []."""
    found = [doc]
    for part in path.split("."):
        nxt = []
        for node in found:
            key, each = (part[:-2], True) if part.endswith("[]") else (part, False)
            if not isinstance(node, dict) or key not in node or node[key] is None:
                return []
            if each:
                if not isinstance(node[key], list) or not node[key]:
                    return []
                nxt.extend(node[key])
            else:
                nxt.append(node[key])
        found = nxt
    return found


def missing_fields(doc: dict) -> list[str]:
    """Required fields absent from a manifest (apiVersion, kind, metadata.name, per kind)."""
    kind = doc.get("kind")
    if kind not in REQUIRED:
        return [f"kind {kind!r} is not one of {sorted(REQUIRED)}"]
    out = [p for p in ("apiVersion", "metadata.name") if not _values(doc, p)]
    if doc.get("apiVersion") != API_VERSIONS[kind]:
        out.append(f"apiVersion {API_VERSIONS[kind]}")
    for path in REQUIRED[kind]:
        head = path.split("[]")[0]
        # A list path counts as missing only if its elements lack the field.
        n_lists = len(_values(doc, head + "[]")) if "[]" in path else 1
        if len(_values(doc, path)) < max(1, n_lists):
            out.append(path)
    return out


MANIFESTS = ["kuberay-shared.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_have_the_required_fields_of_their_kinds(name):
    for doc in _docs(name):
        assert missing_fields(doc) == [], (name, doc.get("kind"))


def test_the_required_field_check_is_not_vacuous():
    doc = _docs("kuberay-raycluster.yaml")[0]
    del doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
    del doc["spec"]["headGroupSpec"]["rayStartParams"]
    assert set(missing_fields(doc)) == {
        "spec.headGroupSpec.rayStartParams",
        "spec.workerGroupSpecs[].template.spec.containers[].image",
    }
    assert missing_fields({"kind": "Pod"}) != []


def _pods(cluster_spec: dict) -> list[tuple[str, dict]]:
    head = cluster_spec["headGroupSpec"]["template"]["spec"]
    return [("head", head)] + [
        (g["groupName"], g["template"]["spec"]) for g in cluster_spec["workerGroupSpecs"]
    ]


def _shared_claims() -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d
        for d in _docs("kuberay-shared.yaml")
        if d["kind"] == "PersistentVolumeClaim"
    }


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"].startswith(RAY_MINOR + ".")
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["autoscalerOptions"]["version"] == "v2"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # a string, as KubeRay wants
    gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert len(gpu) == 1 and gpu[0]["minReplicas"] == 0 and gpu[0]["maxReplicas"] >= 1
    pod = gpu[0]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    claims = _shared_claims()
    for where, pod in _pods(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert all(name in volumes for name in mounts.values()), where
            vol = volumes[mounts[SHARED]]  # every Ray pod sees the shared results volume
            claim = claims[vol["persistentVolumeClaim"]["claimName"]]
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"], where
            env = {e["name"]: e["value"] for e in c.get("env", [])}
            assert env["MLFLOW_TRACKING_URI"] == _mlflow_url(), where


def _mlflow_url() -> str:
    svc = next(d for d in _docs("kuberay-shared.yaml") if d["kind"] == "Service")
    return f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"


def test_raycluster_layout():
    (doc,) = _docs("kuberay-raycluster.yaml")
    _check_ray_cluster_spec(doc["spec"])
    head = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 10001}


def test_rayjob_restarts_the_driver_and_resumes():
    from msdn_tune.cli import main

    (doc,) = _docs("kuberay-rayjob.yaml")
    spec = doc["spec"]
    _check_ray_cluster_spec(spec["rayClusterSpec"])
    assert spec["backoffLimit"] >= 1 and spec["shutdownAfterJobFinishes"] is True
    args = shlex.split(spec["entrypoint"])
    assert args[:3] == ["python", "-m", "msdn_tune.cli"]
    # The entrypoint parses with the real CLI, and is idempotent on retries.
    ctx = main.commands["run"].make_context("run", args[4:])
    assert ctx.params["resume_if_exists"] is True and ctx.params["address"] == "auto"
    assert ctx.params["storage_path"].startswith(SHARED + "/")
    assert ctx.params["tracking_uri"] == _mlflow_url()
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["PYTHONUNBUFFERED"] == "1"


def test_mlflow_deployment_serves_artifacts_on_the_shared_volume():
    docs = {
        d["kind"]: d for d in _docs("kuberay-shared.yaml") if d["kind"] != "PersistentVolumeClaim"
    }
    dep, svc = docs["Deployment"], docs["Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(c["command"] + c["args"])
    assert "--serve-artifacts" in args and f"--artifacts-destination={SHARED}/" in args
    assert svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["containerPort"]
    claims = _shared_claims()
    for v in dep["spec"]["template"]["spec"]["volumes"]:
        assert v["persistentVolumeClaim"]["claimName"] in claims


# --- runtime_env.yaml and the image ---------------------------------------------------------------


def test_runtime_env_file_is_valid_and_matches_submit():
    from ray.runtime_env import RuntimeEnv

    doc = _load("runtime_env.yaml")
    RuntimeEnv(**doc)  # Ray's own validation of the keys and their types
    assert doc["working_dir"] == "." and "pip" not in doc
    assert doc["excludes"] == DEFAULT_EXCLUDES


def test_dockerfile_builds_on_the_pinned_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    base = next(line.split()[1] for line in text.splitlines() if line.startswith("FROM "))
    assert base.startswith(f"rayproject/ray:{RAY_MINOR}.")
    assert "pip install --no-cache-dir ." in text and "COPY" in text
