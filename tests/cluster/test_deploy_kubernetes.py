"""deploy/kubernetes: strict offline schema checks, secure defaults, and the spec builder.

* Built-in kinds (Namespace, PVC, ConfigMap, NetworkPolicy, Job, and the pod specs inside
  the operator resources) go through ``kubernetes-validate --strict`` for a pinned
  Kubernetes version: unknown fields and wrong types are errors.
* Operator resources (DaskCluster, DaskJob, DaskWorkerGroup) go through the CRD OpenAPI
  schemas that ship in the installed dask-kubernetes wheel, made strict (see
  :func:`strict_crd_schema`).
* A broken manifest (unknown field, wrong type) must fail both checks.
* ``kubernetes_cluster_spec`` (built on ``make_cluster_spec``) passes the same checks.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
dask_kubernetes = pytest.importorskip("dask_kubernetes")
jsonschema = pytest.importorskip("jsonschema")

from ntkscale.cluster.kubernetes import kubernetes_cluster_spec  # noqa: E402
from ntkscale.config.kubernetes import parse_kubernetes_options  # noqa: E402
from ntkscale.config.run import RunConfig  # noqa: E402
from tests.support.paths import ROOT  # noqa: E402

#: Kubernetes version whose JSON schemas ship in kubernetes-validate (>=1.31).
K8S_VERSION = "1.31.0"
DEPLOY = ROOT / "deploy" / "kubernetes"
OPERATOR_GROUP = "kubernetes.dask.org/"
OPERATOR_KINDS = ("DaskCluster", "DaskJob", "DaskWorkerGroup")


# ----------------------------------------------------------------------------- loading


def manifest_documents() -> List[Tuple[str, Dict[str, Any]]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.relative_to(DEPLOY)}#{i}", doc))
    return docs


DOCS = manifest_documents()
BUILTIN = [(n, d) for n, d in DOCS if not d["apiVersion"].startswith(OPERATOR_GROUP)]
OPERATOR = [(n, d) for n, d in DOCS if d["apiVersion"].startswith(OPERATOR_GROUP)]


def test_manifests_found():
    kinds = {d["kind"] for _, d in DOCS}
    assert {"Namespace", "PersistentVolumeClaim", "ConfigMap", "NetworkPolicy", "Job",
            "DaskCluster", "DaskJob", "DaskWorkerGroup"} <= kinds, kinds


# ----------------------------------------------------------------------------- schemas


def crd_directory() -> Path:
    """The CRDs the wheel ships, fully expanded (the helm chart's copies)."""
    root = Path(dask_kubernetes.__file__).parent / "operator"
    hits = sorted(root.rglob("crds/daskcluster.yaml"))
    assert hits, f"no CRD yaml files found under {root}"
    return hits[0].parent


def _is_structural(node: Any) -> bool:
    """Every schema node has a type and nothing keeps unknown fields (structural schema)."""
    if not isinstance(node, dict):
        return True
    if "x-kubernetes-preserve-unknown-fields" in node or "type" not in node:
        return False
    if "properties" in node and node["type"] != "object":
        return False
    children = list(node.get("properties", {}).values())
    children += [node[k] for k in ("items", "additionalProperties") if isinstance(node.get(k), dict)]
    return all(_is_structural(child) for child in children)


def _close_objects(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for key in ("properties",):
            for child in node.get(key, {}).values():
                _close_objects(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                _close_objects(node[key])


@functools.lru_cache(maxsize=None)
def strict_crd_schema(kind: str) -> Dict[str, Any]:
    """The CRD's v1 OpenAPI schema with unknown fields rejected.

    The API server *prunes* unknown fields of a structural CRD schema (and rejects them
    under strict field validation, ``kubectl apply --validate=strict``, the default since
    kubectl 1.25). So closing every object that lists its ``properties``
    (``additionalProperties: false``) matches what the server does, but only if the schema
    is structural: we check that first (every node typed, no
    ``x-kubernetes-preserve-unknown-fields``) and refuse to tighten a schema that is not.
    Maps such as labels or resource limits keep their ``additionalProperties`` schema.
    The CRD schema leaves out ``apiVersion``/``kind``/``metadata`` (the server checks those);
    they are added here, with ``metadata`` limited to the fields a manifest sets.
    """
    for path in crd_directory().glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd.get("kind") == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind:
            break
    else:
        raise AssertionError(f"no CRD for {kind} in {crd_directory()}")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    assert _is_structural(schema), f"the {kind} CRD schema is not structural; cannot close it"
    _close_objects(schema)
    schema.setdefault("properties", {}).update({
        "apiVersion": {"const": f"{crd['spec']['group']}/v1"},
        "kind": {"const": kind},
        "metadata": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                         "maxLength": 53},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            }},
    })
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind",
                                                                    "metadata", "spec"})
    schema["additionalProperties"] = False
    return schema


def crd_errors(doc: Dict[str, Any]) -> List[str]:
    validator = jsonschema.Draft7Validator(strict_crd_schema(doc["kind"]))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)]


def builtin_errors(doc: Dict[str, Any]) -> List[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


def pod_specs(doc: Dict[str, Any]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(role, pod spec) of every pod a manifest describes."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Job":
        yield "driver", spec["template"]["spec"]
    elif kind == "DaskCluster":
        yield "scheduler", spec["scheduler"]["spec"]
        yield "worker", spec["worker"]["spec"]
    elif kind == "DaskJob":
        yield "driver", spec["job"]["spec"]
        yield from pod_specs({"kind": "DaskCluster", "spec": spec["cluster"]["spec"]})
    elif kind == "DaskWorkerGroup":
        yield "worker", spec["worker"]["spec"]


def as_pod(pod_spec: Dict[str, Any]) -> Dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_spec}


# ----------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("name,doc", BUILTIN, ids=[n for n, _ in BUILTIN])
def test_builtin_kinds_are_strictly_valid(name, doc):
    assert builtin_errors(doc) == []


@pytest.mark.parametrize("name,doc", OPERATOR, ids=[n for n, _ in OPERATOR])
def test_operator_resources_match_the_crd(name, doc):
    assert doc["kind"] in OPERATOR_KINDS
    assert crd_errors(doc) == []


@pytest.mark.parametrize("name,doc", OPERATOR, ids=[n for n, _ in OPERATOR])
def test_operator_pod_specs_are_strictly_valid_pods(name, doc):
    # The CRD copies PodSpec loosely (no quantity or enum checks); the real schema does them.
    for role, pod in pod_specs(doc):
        assert builtin_errors(as_pod(pod)) == [], role


def check_secure_defaults(doc: Dict[str, Any], store_claim: Any = "ntkscale-store") -> None:
    for role, pod in pod_specs(doc):
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, role
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, role
        assert pod["automountServiceAccountToken"] is False, role
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"], role
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, role
            assert sc["readOnlyRootFilesystem"] is True, role
            assert sc["capabilities"] == {"drop": ["ALL"]}, role
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], role
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(limits), role
            assert container["resources"]["requests"]["memory"] == limits["memory"], role
            if role != "scheduler" and store_claim:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == \
                    store_claim, role


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in DOCS if list(pod_specs(d))],
                         ids=[n for n, d in DOCS if list(pod_specs(d))])
def test_pods_have_secure_defaults(name, doc):
    check_secure_defaults(doc)


def test_gpu_workers_and_store():
    gpu_kinds = {"DaskCluster", "DaskJob"}
    for _, doc in DOCS:
        if doc["kind"] in gpu_kinds:
            for role, pod in pod_specs(doc):
                if role == "worker":
                    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pvc = next(d for _, d in DOCS if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["name"] == "ntkscale-store"


def test_scheduler_reachable_only_inside():
    policies = [d for _, d in DOCS if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny, "a default-deny ingress policy is missing"
    sched = [p for p in policies
             if p["spec"]["podSelector"].get("matchLabels", {}).get("dask.org/component") == "scheduler"]
    assert len(sched) == 1
    for rule in sched[0]["spec"]["ingress"]:
        for peer in rule["from"]:
            assert "ipBlock" not in peer  # no addresses from outside the cluster
            assert set(peer) <= {"podSelector", "namespaceSelector"}
    services = [d["spec"]["scheduler"]["service"] for _, d in DOCS if d["kind"] == "DaskCluster"]
    services += [d["spec"]["cluster"]["spec"]["scheduler"]["service"]
                 for _, d in DOCS if d["kind"] == "DaskJob"]
    assert services and all(s["type"] == "ClusterIP" for s in services)


def test_example_run_configs_are_valid_and_point_at_the_scheduler():
    clusters = {d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == "DaskCluster"}
    clusters.update({d["metadata"]["name"]: d for _, d in DOCS if d["kind"] == "DaskJob"})
    maps = [d for _, d in DOCS if d["kind"] == "ConfigMap"]
    assert maps
    for cm in maps:
        raw = yaml.safe_load(cm["data"]["config.yaml"])
        config = RunConfig.from_mapping(raw, "/config", source=cm["metadata"]["name"],
                                        check_files=False)
        assert config.cluster.kind == "address"
        assert config.store.startswith("/data/")
        host = config.cluster.address.split("//")[1].split(":")[0]
        name, _, rest = host.partition("-scheduler.")
        assert name in clusters, host
        assert rest == f"{clusters[name]['metadata']['namespace']}.svc.cluster.local"


# ----------------------------------------------------------------------------- broken ones


def _daskcluster() -> Dict[str, Any]:
    return copy.deepcopy(next(d for _, d in DOCS if d["kind"] == "DaskCluster"))


def _job() -> Dict[str, Any]:
    return copy.deepcopy(next(d for _, d in DOCS if d["kind"] == "Job"))


@pytest.mark.parametrize("breakage", [
    "unknown top-level field", "unknown spec field", "unknown deep field",
    "replicas not an integer", "integer gpu quantity", "missing scheduler", "label value not a string"])
def test_broken_operator_resource_fails(breakage):
    doc = _daskcluster()
    worker = doc["spec"]["worker"]
    if breakage == "unknown top-level field":
        doc["extra"] = 1
    elif breakage == "unknown spec field":
        doc["spec"]["workers"] = worker
    elif breakage == "unknown deep field":
        worker["spec"]["containers"][0]["securityContext"]["runAsRoot"] = False
    elif breakage == "replicas not an integer":
        worker["replicas"] = "four"
    elif breakage == "integer gpu quantity":
        # The CRD types quantities as strings: an unquoted 1 is rejected by the API server.
        worker["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    elif breakage == "missing scheduler":
        del doc["spec"]["scheduler"]
    elif breakage == "label value not a string":
        doc["metadata"]["labels"]["replicas"] = 4
    assert crd_errors(doc), breakage


@pytest.mark.parametrize("breakage", ["unknown field", "wrong type", "unknown container field"])
def test_broken_builtin_fails(breakage):
    doc = _job()
    if breakage == "unknown field":
        doc["spec"]["backofLimit"] = 3
    elif breakage == "wrong type":
        doc["spec"]["backoffLimit"] = "six"
    else:
        doc["spec"]["template"]["spec"]["containers"][0]["securityContexts"] = {}
    assert builtin_errors(doc), breakage


def test_broken_file_fails_the_cli(tmp_path):
    """The CLI route (`kubernetes-validate --strict`) also rejects a broken manifest."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    good = DEPLOY / "50-driver-job.yaml"
    bad = tmp_path / "bad-job.yaml"
    doc = _job()
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    bad.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
           "-k", K8S_VERSION]
    assert subprocess.run(cmd + [str(good)], capture_output=True).returncode == 0
    result = subprocess.run(cmd + [str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "imagePullPolice" in result.stdout + result.stderr


# ----------------------------------------------------------------------------- spec builder

BUILDER_OPTIONS = {
    "gpu": {"kind": "kubernetes", "image": "registry.example.com/ntkscale:0.1.0",
            "namespace": "ntkscale", "n_workers": 4, "gpus_per_worker": 1, "memory": "32GiB",
            "cpu": 8, "store_claim": "ntkscale-store", "store_mount": "/data"},
    "cpu": {"kind": "kubernetes", "image": "ntkscale:dev", "n_workers": 2, "memory": "3GB",
            "cpu": "500m", "image_pull_policy": "Never", "env": {"EXTRA": "1"},
            "node_selector": {"pool": "cpu"}, "tolerations": [
                {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]},
}


@pytest.mark.parametrize("which", sorted(BUILDER_OPTIONS))
def test_kubernetes_cluster_spec_is_valid(which):
    spec = kubernetes_cluster_spec(BUILDER_OPTIONS[which])
    assert crd_errors(spec) == []
    for role, pod in pod_specs(spec):
        assert builtin_errors(as_pod(pod)) == [], role
    check_secure_defaults(spec, BUILDER_OPTIONS[which].get("store_claim"))
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    if which == "gpu":
        assert spec["spec"]["worker"]["replicas"] == 4
        assert worker["resources"]["limits"] == {"cpu": "8", "memory": "32Gi",
                                                 "nvidia.com/gpu": "1"}
        assert {"name": "store", "mountPath": "/data"} in worker["volumeMounts"]
        assert spec["metadata"]["namespace"] == "ntkscale"
    else:
        assert worker["resources"]["limits"] == {"cpu": "500m", "memory": "3G"}
        assert worker["args"][:4] == ["dask", "worker", "--nthreads", "1"]
        assert {"name": "EXTRA", "value": "1"} in worker["env"]
        assert spec["spec"]["worker"]["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert spec["spec"]["scheduler"]["spec"]["containers"][0]["args"][:2] == ["dask", "scheduler"]


def test_kubernetes_cluster_spec_matches_the_manifest_where_it_matters():
    """The shipped DaskCluster is what the builder makes for the same options."""
    built = kubernetes_cluster_spec(BUILDER_OPTIONS["gpu"])
    shipped = _daskcluster()
    for role in ("scheduler", "worker"):
        b, s = built["spec"][role]["spec"], shipped["spec"][role]["spec"]
        assert b["securityContext"] == s["securityContext"], role
        bc, sc = b["containers"][0], s["containers"][0]
        assert bc["args"] == sc["args"], role
        assert bc["resources"] == sc["resources"], role
        assert bc["securityContext"] == sc["securityContext"], role
        assert bc["ports"] == sc["ports"], role
    assert built["spec"]["scheduler"]["service"] == shipped["spec"]["scheduler"]["service"]


def test_raw_make_cluster_spec_needs_the_fixes():
    """What make_cluster_spec gives alone is not what we ship: nulls and old commands."""
    from dask_kubernetes.operator import make_cluster_spec  # noqa: PLC0415

    raw = make_cluster_spec(name="ntkscale", image="x", n_workers=1,
                            resources={"limits": {"nvidia.com/gpu": 1}})
    errors = crd_errors(raw)
    assert any("nvidia.com/gpu" in e or "not of type 'string'" in e for e in errors), errors
    worker_args = raw["spec"]["worker"]["spec"]["containers"][0]["args"]
    assert worker_args[0] == "dask-worker"  # a script recent distributed no longer installs
    opts = parse_kubernetes_options({"kind": "kubernetes", "image": "x"})
    fixed = kubernetes_cluster_spec(opts)
    assert fixed["spec"]["worker"]["spec"]["containers"][0]["args"][:2] == ["dask", "worker"]
