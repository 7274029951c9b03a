"""The Kubernetes manifests render with kustomize and validate against the Kubernetes
schemas (kubernetes-validate) and the KEDA and Prometheus Operator CRDs (cloudcoil's
models of them); KEDA's trigger counts the queue on the real schema."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from omniflash.store import Store
from tests.conftest import _truncate
from tests.money import assert_money
from tests.shipping.podman import ROOT
from tests.store.test_store import submit

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(120)]

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAY = KUBERNETES / "overlays" / "example"
K8S_VERSION = "1.32"  # the oldest Kubernetes these manifests are checked against
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("cloudcoil.models.keda.v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (
        "cloudcoil.models.keda.v1alpha1",
        "TriggerAuthentication",
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        "cloudcoil.models.prometheus_operator.v1",
        "ServiceMonitor",
    ),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of the example overlay, with its env files made from the examples."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (1.27+, for kustomize v5) is not installed")
    version = json.loads(
        subprocess.run(
            ["kubectl", "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        or "{}"
    )
    kustomize = version.get("kustomizeVersion", "v2 (kubectl before 1.21)")
    if not kustomize.startswith("v5"):
        pytest.skip(f"kubectl's kustomize is {kustomize}; the manifests need v5 (kubectl 1.27+)")
    tree = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    overlay = tree / "overlays" / "example"
    for name in ("api.env", "worker.env"):
        shutil.copy(overlay / f"{name}.example", overlay / name)
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pods(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def test_every_manifest_validates(rendered: list[dict[str, Any]]) -> None:
    import importlib

    import kubernetes_validate

    kinds = set()
    for doc in rendered:
        kinds.add(doc["kind"])
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_MODELS:
            module, name = CRD_MODELS[key]
            model = getattr(importlib.import_module(module), name).model_validate(doc)
            # The models ignore unknown fields; a field they dropped is a misspelt one.
            assert model.model_dump(by_alias=True, exclude_unset=True) == doc, doc
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert kinds == {
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "Job",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
    }
    assert {d["metadata"].get("namespace") for d in rendered} == {"omniflash"}


def test_a_misspelt_field_fails_validation(rendered: list[dict[str, Any]]) -> None:
    import kubernetes_validate
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    api = by_kind(rendered, "Deployment", "omniflash-api")
    broken = {**api, "spec": {**api["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    scaled = by_kind(rendered, "ScaledObject", "omniflash-worker")
    typo = {**scaled, "spec": {**scaled["spec"], "minReplicas": 0}}
    model = ScaledObject.model_validate(typo)
    assert model.model_dump(by_alias=True, exclude_unset=True) != typo


def test_the_api_migrates_first_and_is_probed_on_healthz(rendered: list[dict[str, Any]]) -> None:
    api = pods(by_kind(rendered, "Deployment", "omniflash-api"))
    assert [c["args"] for c in api["initContainers"]] == [["migrate"]]
    (container,) = api["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert "--workers" in container["args"] and container["args"][-1] == "0"
    assert by_kind(rendered, "Job", "omniflash-migrate")["spec"]["template"]["spec"]["containers"][
        0
    ]["args"] == ["migrate"]
    pdb = by_kind(rendered, "PodDisruptionBudget", "omniflash-api")
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "omniflash-api"}
    monitor = by_kind(rendered, "ServiceMonitor", "omniflash-api")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_gpu_workers_hold_a_gpu_and_no_database_credentials(
    rendered: list[dict[str, Any]],
) -> None:
    worker = pods(by_kind(rendered, "Deployment", "omniflash-worker"))
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["nodeSelector"] and worker["tolerations"]
    assert container["envFrom"] == [{"secretRef": {"name": "omniflash-worker"}}]
    secret = by_kind(rendered, "Secret", "omniflash-worker")
    assert set(secret["data"]) == {"OMNIFLASH_WORKER_TOKEN"}
    # SIGTERM hands the task back at once; the grace period leaves room for the engine
    # child to stop and the release to reach the API.
    assert worker["terminationGracePeriodSeconds"] >= 30


def test_keda_scales_workers_to_zero_on_the_secret_the_api_uses(
    rendered: list[dict[str, Any]],
) -> None:
    scaled = by_kind(rendered, "ScaledObject", "omniflash-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "omniflash-worker"
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "postgresql"
    assert trigger["metadata"]["activationTargetQueryValue"] == "0"
    auth = by_kind(rendered, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "connection"
    assert ref["key"] in by_kind(rendered, "Secret", ref["name"])["data"]


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    _truncate(store)
    try:
        yield store
    finally:
        _truncate(store)
        store.close()


@pytest.mark.postgres
def test_kedas_query_counts_pending_and_running_tasks_on_the_real_schema(
    rendered: list[dict[str, Any]], pg_store: Store
) -> None:
    """The query runs on a database omniflash migrated, and counts the tasks a worker is
    or will be busy with: pending (to wake one) and processing (so none is scaled away
    mid-task), not ended ones."""
    (trigger,) = by_kind(rendered, "ScaledObject", "omniflash-worker")["spec"]["triggers"]
    query = trigger["metadata"]["query"]

    def count() -> int:
        with pg_store.db.read() as conn:
            return int(conn.exec_driver_sql(query).scalar_one())

    assert count() == 0
    _, info = pg_store.keys.create("keda", 1_000_000, 600, 10)
    ids = [submit(pg_store, info).id for _ in range(5)]
    running = pg_store.tasks.claim("gpu-a", lease_s=30)
    failing = pg_store.tasks.claim("gpu-b", lease_s=30)
    assert running is not None and failing is not None
    assert pg_store.tasks.fail(
        failing.task.id, failing.epoch, "out of memory", retry=False, max_attempts=1
    )
    pg_store.tasks.cancel(ids[2], info.id)
    # two pending, one processing, one failed, one cancelled
    assert count() == 3
    assert pg_store.tasks.pending_count() == 2  # omniflash_queue_depth counts these
    assert_money(pg_store)
