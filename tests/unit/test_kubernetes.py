"""deploy/kubernetes: every manifest checked against the Kubernetes API's own models, the
containers' arguments against the services' real configuration loaders, and the scrape jobs
with `promtool check config`.

The schema check walks each document through the generated models of the official `kubernetes`
client (`openapi_types` and `attribute_map` per kind): an unknown field, a wrong type or a
missing required field fails, as `kubectl apply --validate=strict` would, without a cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from forecaster.config import load_config as forecaster_config
from training.retrain.config import load_config as retrain_config

kubernetes = pytest.importorskip("kubernetes")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KINDS = {  # (apiVersion, kind) -> the client's model
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("apps/v1", "Deployment"): "V1Deployment",
}
SCALARS = {"str": str, "bool": bool, "float": (int, float), "object": object, "datetime": str}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _strict(value: Any, kind: str, where: str) -> list[str]:
    """Problems of `value` against the client's type `kind` (unknown fields, wrong types)."""
    if kind.startswith("List["):
        if not isinstance(value, list):
            return [f"{where}: a list expected"]
        return [p for i, v in enumerate(value) for p in _strict(v, kind[5:-1], f"{where}[{i}]")]
    if kind.startswith("Dict["):
        inner = kind[kind.index(",") + 1 : -1].strip()
        if not isinstance(value, dict):
            return [f"{where}: a mapping expected"]
        return [p for k, v in value.items() for p in _strict(v, inner, f"{where}.{k}")]
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: an integer expected, not {value!r}"]
    if kind in SCALARS:
        return [] if isinstance(value, SCALARS[kind]) else [f"{where}: {kind} expected"]
    model = getattr(kubernetes.client, kind)
    if not isinstance(value, dict):
        return [f"{where}: a {kind} mapping expected"]
    fields = {json_name: name for name, json_name in model.attribute_map.items()}
    problems = [f"{where}.{key}: not a field of {kind}" for key in value if key not in fields]
    for key, item in value.items():
        if key in fields:
            problems += _strict(item, model.openapi_types[fields[key]], f"{where}.{key}")
    return problems


@pytest.mark.parametrize(("name", "document"), _documents(), ids=lambda x: str(x)[:40])
def test_every_manifest_is_a_valid_object_of_its_kind(name, document):
    model = KINDS[(document["apiVersion"], document["kind"])]
    assert _strict(document, model, f"{name}:{document['kind']}") == []
    # and the client builds it: required fields present (its models refuse None for them)
    api = kubernetes.client.ApiClient()
    built = api.deserialize(json.dumps(document), model, "application/json")
    assert built.metadata.name == document["metadata"]["name"]


def test_a_schema_violation_is_caught():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    bad["spec"] = {"replicas": "2", "selectr": {}}
    assert _strict(bad, "V1Deployment", "bad") == [
        "bad.spec.selectr: not a field of V1DeploymentSpec",
        "bad.spec.replicas: an integer expected, not '2'",
    ]
    nameless = {**bad, "spec": {"selector": {}, "template": {"spec": {"containers": [{}]}}}}
    with pytest.raises(ValueError, match="V1Container"):  # pydantic's error: a required field
        kubernetes.client.ApiClient().deserialize(
            json.dumps(nameless), "V1Deployment", "application/json"
        )


def _container(kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for _, document in _documents():
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document, document["spec"]["template"]["spec"]["containers"][0]
    raise AssertionError(f"no {kind} {name}")


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_the_shards_are_the_statefulset_replicas_and_the_arguments_load():
    statefulset, container = _container("StatefulSet", "forecaster")
    env = _env(container)
    assert int(env["FORECASTER_SHARD_COUNT"]) == statefulset["spec"]["replicas"]
    index = next(e for e in container["env"] if e["name"] == "FORECASTER_SHARD_INDEX")
    assert "apps.kubernetes.io/pod-index" in index["valueFrom"]["fieldRef"]["fieldPath"]
    assert container["args"][:3] == ["python", "-m", "forecaster"]
    for ordinal in range(statefulset["spec"]["replicas"]):
        config = forecaster_config(
            container["args"][3:], {**env, "FORECASTER_SHARD_INDEX": str(ordinal)}
        )
        assert (config.shard.index, config.shard.count) == (
            ordinal,
            int(env["FORECASTER_SHARD_COUNT"]),
        )
    port = config.web.listen_address.rsplit(":", 1)[1]
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {str(config.model.dir), str(config.state.dir)} <= mounts
    assert str(config.web.token_file.parent) in mounts


def test_the_retrainer_arguments_load_and_it_writes_where_the_shards_read():
    deployment, container = _container("Deployment", "forecaster-retrain")
    assert deployment["spec"]["replicas"] == 1
    assert container["args"][:3] == ["python", "-m", "training.retrain"]
    config = retrain_config(container["args"][3:], _env(container))
    assert config.shadow.cycles > 0
    _, forecaster = _container("StatefulSet", "forecaster")
    shard_dir = forecaster_config(forecaster["args"][3:], _env(forecaster)).model.dir
    assert config.models.dir == shard_dir


@pytest.mark.prometheus
def test_the_scrape_jobs_pass_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    jobs = yaml.safe_load((DEPLOY / "prometheus-scrape.yml").read_text())
    forecaster = next(j for j in jobs["scrape_configs"] if j["job_name"] == "forecaster")
    assert forecaster["honor_labels"] is True
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "15s"}, **jobs}))
    done = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
