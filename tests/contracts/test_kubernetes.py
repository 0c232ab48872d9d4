"""deploy/k8s against the code and the Kubernetes API: every overlay renders (kubectl's own
kustomize, twice, to the same bytes); every object is valid for the current Kubernetes release
(kubernetes-validate, strict); every container runs a real service, sets only its real settings
(through the services' own loader), listens where its settings say, finds the others by DNS
over Services that exist; every HPA scales a Deployment that exists on metrics the services
export; only the gateway's V2 port is open to the world.

Rendering needs kubectl (Debian's kubernetes-client; ``./dev install`` unpacks it into the venv
like promtool); without it these tests skip and say so.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import pytest
import yaml
from deploy_files import ROOT

from modelserve.server import ServiceSpec, dependency_addresses
from modelserve.settings import CommonSettings, env_names, load_settings

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "secure")
# The modelserve workloads: the first container argument is the service's package.
SERVICES = ("gateway", "router", "worker", "registry", "featurestore", "streamer")
DATA_PLANE = {"gateway": "modelserve_model_in_flight", "router": "modelserve_rpcs_in_flight"}
DATA_PLANE["worker"] = "modelserve_queue_depth"
# Environment variables the batch CLI reads (not service settings): modelserve.cli.*.
CLI_ENV = {"MODELSERVE_BATCH_CACHE_DIR", "MODELSERVE_TLS_CA", "MODELSERVE_TLS_CERT"}
CLI_ENV |= {"MODELSERVE_TLS_KEY"}
CRD_KINDS = {"ServiceMonitor"}  # kubernetes-validate ships only the built-in API's schemas
KUBERNETES_VERSION = kv_utils.latest_version()
POD_NAME = "modelserve-pod-0"  # what a fieldRef to metadata.name gives, for loading settings


def kubectl() -> str | None:
    return shutil.which("kubectl") or _existing(Path(sys.executable).parent / "kubectl")


def _existing(path: Path) -> str | None:
    return str(path) if path.exists() else None


needs_kubectl = pytest.mark.skipif(
    kubectl() is None, reason="kubectl not installed (./dev install unpacks kubernetes-client)"
)


@functools.cache
def rendered_text(overlay: str) -> str:
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl not installed (./dev install unpacks kubernetes-client)")
    result = subprocess.run(
        [binary, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def _parsed(text: str) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(text) if d)


def objects(overlay: str) -> list[dict[str, Any]]:
    return list(_parsed(rendered_text(overlay)))


def of_kind(overlay: str, *kinds: str) -> list[dict[str, Any]]:
    return [o for o in objects(overlay) if o["kind"] in kinds]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(overlay, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: {len(found)} {kind}/{name}"
    return found[0]


def workloads(overlay: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(service, workload, its container) for every modelserve Deployment/StatefulSet."""
    for o in of_kind(overlay, "Deployment", "StatefulSet"):
        container = o["spec"]["template"]["spec"]["containers"][0]
        if container["image"].startswith("modelserve"):
            yield container["args"][0], o, container


def workload(overlay: str, service: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for name, o, container in workloads(overlay):
        if name == service:
            return o, container
    raise AssertionError(f"{overlay} runs no {service}")


def spec_of(name: str) -> ServiceSpec[Any]:
    spec = importlib.import_module(name).SPEC
    assert isinstance(spec, ServiceSpec)
    return spec


def env_of(container: dict[str, Any]) -> dict[str, str]:
    out = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", item
            out[item["name"]] = POD_NAME
        else:
            out[item["name"]] = str(item["value"])
    return out


@functools.cache
def secret_dir() -> Path:
    """Stands in for a mounted kubernetes.io/tls Secret: the files its keys become."""
    directory = Path(tempfile.mkdtemp(prefix="k8s-tls-"))
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (directory / key).write_text("")
    return directory


def settings_of(overlay: str, service: str) -> CommonSettings:
    """The settings the container starts with: its env through the service's own loader, the
    Secret's mount path pointing at files that exist (settings check that TLS files do)."""
    _, container = workload(overlay, service)
    env = env_of(container)
    for mount in container.get("volumeMounts", []):
        if mount["name"] == "tls":
            prefix = mount["mountPath"] + "/"
            env = {k: v.replace(prefix, f"{secret_dir()}/") for k, v in env.items()}
    settings: CommonSettings = load_settings(spec_of(service).settings_cls, [], env)
    return settings


def ports_of(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    if any(labels.get(k) != v for k, v in wanted.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def pod_labels(o: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = o["spec"]["template"]["metadata"]["labels"]
    return labels


# --- rendering and the API schemas ------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_same_every_time(overlay: str) -> None:
    first = rendered_text(overlay)
    rendered_text.cache_clear()
    assert rendered_text(overlay) == first
    kinds = {o["kind"] for o in objects(overlay)}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
    assert all(o["metadata"].get("namespace") == "modelserve" for o in objects(overlay)
               if o["kind"] != "Namespace")  # fmt: skip


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_current_kubernetes_release(overlay: str) -> None:
    problems = []
    for o in objects(overlay):
        if o["kind"] in CRD_KINDS:
            continue  # test_service_monitor_scrapes_every_metrics_port checks these
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{o['kind']}/{o['metadata']['name']}: {exc.message} at {exc.path}")
    assert problems == []


@needs_kubectl
def test_custom_resources_are_the_ones_the_schemas_lack() -> None:
    for o in of_kind("cpu", *CRD_KINDS):
        with pytest.raises(kv_utils.SchemaNotFoundError):
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
    pytest.skip(
        "ServiceMonitor (monitoring.coreos.com/v1) has no schema in kubernetes-validate; "
        "its fields are checked against the Services it selects instead"
    )


# --- containers against the services' settings -------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_runs_once_as_its_package(overlay: str) -> None:
    names = [name for name, _, _ in workloads(overlay)]
    assert sorted(names) == sorted(SERVICES)
    for name, _, container in workloads(overlay):
        assert spec_of(name).name == name
        assert container["args"] == [name]  # the image's ENTRYPOINT is `modelserve serve`


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_environment_sets_only_real_settings(overlay: str, service: str) -> None:
    _, container = workload(overlay, service)
    known = {e for f in dataclasses.fields(spec_of(service).settings_cls) for e in env_names(f)}
    unknown = sorted(set(env_of(container)) - known)
    assert unknown == [], f"{service} sets env vars that are no setting of it: {unknown}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_services_find_each_other_by_dns_over_services_that_exist(
    overlay: str, service: str
) -> None:
    settings = settings_of(overlay, service)  # validate() runs: bad values fail here
    assert settings.discovery == "dns"
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    assert settings.instance_id == POD_NAME
    services = {s["metadata"]["name"]: s for s in of_kind(overlay, "Service")}
    for dependency, addresses in dependency_addresses(settings).items():
        assert addresses, f"{service} has no {dependency} address"
        for address in addresses:
            host, _, port = address.rpartition(":")
            target = services.get(host)
            assert target is not None, f"{service}: {address} names no Service"
            assert target["spec"].get("clusterIP") == "None", f"{host} is not headless"
            grpc_port = next(p for p in target["spec"]["ports"] if p["name"] == "grpc")
            assert int(port) == grpc_port["port"] == settings_of(overlay, dependency).port


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_container_ports_and_probes_are_the_settings_ports(overlay: str, service: str) -> None:
    settings = settings_of(overlay, service)
    default = next(f for f in dataclasses.fields(settings) if f.name == "port").default
    assert settings.port == default
    ports = ports_of(workload(overlay, service)[1])
    assert ports == {"grpc": default, "metrics": settings.resolved_metrics_port(default)}
    _, container = workload(overlay, service)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if "grpc" in spec:
            assert spec["grpc"] == {"port": default}
        elif "tcpSocket" in spec:
            assert spec["tcpSocket"]["port"] == default
        else:
            assert spec["exec"]["command"][-1] == str(default)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_outlive_the_drain_and_the_shutdown_grace(overlay: str) -> None:
    for service, o, _ in workloads(overlay):
        settings = settings_of(overlay, service)
        needed = settings.resolved_drain_seconds() + settings.shutdown_grace_seconds
        grace = o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > needed, f"{service}: {grace}s of grace for {needed}s of shutdown"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for o in of_kind(overlay, "Deployment", "StatefulSet"):
        for c in o["spec"]["template"]["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), o["metadata"]["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), o["metadata"]["name"]


@needs_kubectl
def test_registry_and_featurestore_are_single_replicas_on_a_volume() -> None:
    for name in ("registry", "featurestore"):
        o = one("cpu", "StatefulSet", name)
        assert o["spec"]["replicas"] == 1  # SQLite on a ReadWriteOnce volume
        assert [t["metadata"]["name"] for t in o["spec"]["volumeClaimTemplates"]] == ["data"]


# --- Services, monitoring, autoscaling ------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_every_metrics_port(overlay: str) -> None:
    monitors = of_kind(overlay, "ServiceMonitor")
    assert [m["apiVersion"] for m in monitors] == ["monitoring.coreos.com/v1"]
    services = of_kind(overlay, "Service")
    for service, o, container in workloads(overlay):
        backing = [s for s in services if s["spec"]["selector"].items() <= pod_labels(o).items()]
        scraped = [
            s
            for s in backing
            for m in monitors
            if matches(m["spec"]["selector"], s["metadata"]["labels"])
            for e in m["spec"]["endpoints"]
            if any(
                p["name"] == e["port"] and p["port"] == ports_of(container)["metrics"]
                for p in s["spec"]["ports"]
            )
        ]
        assert len(scraped) == 1, f"{service}: its metrics port is scraped {len(scraped)} times"
    for m in monitors:
        for e in m["spec"]["endpoints"]:
            assert re.fullmatch(r"\d+s", e["interval"]) and e["path"] == "/metrics"
            assert e["honorLabels"] is True  # keep the series' own `service` label
            assert e["scheme"] == ("https" if overlay == "secure" else "http")


def declared_metrics() -> set[str]:
    """Every metric name the services declare, from prometheus_client's registry."""
    from prometheus_client import REGISTRY

    for module in ("modelserve.metrics", "worker.metrics", "router.metrics"):
        importlib.import_module(module)
    return {family.name for family in REGISTRY.collect()}


def adapter_rules(overlay: str) -> list[dict[str, Any]]:
    config = one(overlay, "ConfigMap", "prometheus-adapter-modelserve")["data"]["config.yaml"]
    rules: list[dict[str, Any]] = yaml.safe_load(config)["rules"]
    return rules


@needs_kubectl
def test_adapter_rules_map_exported_series_to_pod_metrics() -> None:
    declared = declared_metrics()
    for rule in adapter_rules("cpu"):
        series = re.match(r"(\w+)\{", rule["seriesQuery"])
        assert series is not None and series.group(1) in declared, rule["seriesQuery"]
        assert re.fullmatch(rule["name"]["matches"], series.group(1))
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "sum by (<<.GroupBy>>)" in rule["metricsQuery"]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_hpa_per_data_plane_deployment_on_cpu_and_its_signal(overlay: str) -> None:
    deployments = {d["metadata"]["name"] for d in of_kind(overlay, "Deployment")}
    pod_metrics = {r["name"]["as"] for r in adapter_rules(overlay)}
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(overlay, "HorizontalPodAutoscaler")
    }
    assert set(hpas) == set(DATA_PLANE)
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"]["kind"] == "Deployment" and name in deployments
        assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 100)
        by_type = {m["type"]: m for m in spec["metrics"]}
        cpu = by_type["Resource"]["resource"]
        assert cpu["name"] == "cpu" and cpu["target"]["averageUtilization"] == 70
        pods = by_type["Pods"]["pods"]
        assert pods["metric"]["name"] == DATA_PLANE[name] and DATA_PLANE[name] in pod_metrics
        assert pods["target"]["type"] == "AverageValue"


@needs_kubectl
def test_router_and_worker_services_are_headless_with_pdbs() -> None:
    for name in ("router", "worker", "gateway"):
        assert one("cpu", "Service", name)["spec"]["clusterIP"] == "None"
        pdb = one("cpu", "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}


# --- who may reach what -------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_v2_port_is_open_to_everyone(overlay: str) -> None:
    policies = of_kind(overlay, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny, "no default-deny ingress policy"
    pods = {name: pod_labels(o) for name, o, _ in workloads(overlay)}
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if rule.get("from"):
                continue  # restricted to selected peers
            selected = [
                n for n, labels in pods.items() if matches(p["spec"]["podSelector"], labels)
            ]
            assert selected == ["gateway"], f"{p['metadata']['name']} opens {selected}"
            assert [port["port"] for port in rule["ports"]] == [8001]
    public = [s for s in of_kind(overlay, "Service") if s["spec"].get("type") == "LoadBalancer"]
    assert [(s["metadata"]["name"], [p["port"] for p in s["spec"]["ports"]]) for s in public] == [
        ("gateway-public", [8001])
    ]


@needs_kubectl
def test_registry_admits_the_suite_and_operator_namespaces_only() -> None:
    policy = one("cpu", "NetworkPolicy", "registry-admin")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "modelserve"}}} in peers
    assert {"namespaceSelector": {"matchLabels": {"modelserve.io/operator": "true"}}} in peers
    cron = one("cpu", "CronJob", "modelserve-batch-fraud-daily")
    labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "modelserve"  # the batch job is admitted


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_batch_cronjob_sets_only_what_the_cli_reads(overlay: str) -> None:
    cron = one(overlay, "CronJob", "modelserve-batch-fraud-daily")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    names = set(env_of(container))
    assert names <= CLI_ENV, names - CLI_ENV
    cli_sources = "".join(p.read_text() for p in (ROOT / "services/modelserve/cli").rglob("*.py"))
    assert all(f'"{n}"' in cli_sources for n in names), names


# --- overlays ------------------------------------------------------------------------------------


@needs_kubectl
def test_gpu_overlay_puts_workers_on_gpu_nodes_only() -> None:
    o, container = workload("gpu", "worker")
    pod = o["spec"]["template"]["spec"]
    assert container["image"].startswith("modelserve-worker-gpu:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    for name in ("gateway", "router", "registry"):
        assert "nvidia.com/gpu" not in str(workload("gpu", name)[1]["resources"])
    assert workload("cpu", "worker")[1]["image"] == "modelserve:latest"


@needs_kubectl
@pytest.mark.parametrize("service", SERVICES)
def test_secure_overlay_serves_tls_from_secrets_and_probes_without_plaintext(service: str) -> None:
    settings = settings_of("secure", service)
    assert settings.tls_cert_file and settings.tls_key_file and settings.tls_ca_file
    assert settings.tls_require_client_cert == (service != "gateway")
    o, container = workload("secure", service)
    volumes = {v["name"]: v for v in o["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == f"{service}-tls"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tls"]["readOnly"] is True
    assert env_of(container)["MODELSERVE_TLS_CERT_FILE"].startswith(mounts["tls"]["mountPath"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" not in container[probe], f"{service} {probe} would speak plaintext"
    assert container["readinessProbe"]["exec"]["command"][:2] == ["python", "-c"]
    # Plain overlays keep kubelet's native gRPC probes.
    assert workload("cpu", service)[1]["readinessProbe"]["grpc"] == {"port": settings.port}
