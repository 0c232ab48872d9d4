"""docker-compose.yml against the code: every modelserve container runs a real service, sets
only real settings (loaded through the services' own settings loader), listens where the
settings say, finds the others through Consul, exports traces to a collector that exists, is
scraped by Prometheus, and gets the time RELIABILITY.md's graceful shutdown needs; and runs
secure by default: the one-shot `init` writes (here: really runs its command into a temporary
folder) every certificate, key and token the services, Consul and Prometheus read."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from deploy_files import (
    COMPOSE,
    ROOT,
    command,
    container_ports,
    effective,
    environment,
    exec_form,
    load_compose,
    load_stages,
    provenance,
    published_ports,
    seconds,
    volume_mounts,
)

from modelserve.cli.suite import SERVICES
from modelserve.server import ServiceSpec
from modelserve.settings import CommonSettings, env_names, load_settings

COMPOSE_DATA = load_compose()
COMPOSE_SERVICES: dict[str, dict[str, Any]] = COMPOSE_DATA["services"]
INFRASTRUCTURE = {
    "consul": "hashicorp/consul",
    "redis": "redis",
    "jaeger": "jaegertracing/jaeger",
    "otel-collector": "otel/opentelemetry-collector-contrib",
    "grafana": "grafana/grafana",
    "prometheus": "prom/prometheus",
}
# Env vars a service may set that are not modelserve settings (none today).
NOT_SETTINGS: frozenset[str] = frozenset()


def spec_of(name: str) -> ServiceSpec[Any]:
    spec = importlib.import_module(name).SPEC
    assert isinstance(spec, ServiceSpec), f"{name}.SPEC is {type(spec).__name__}"
    return spec


def service(name: str) -> dict[str, Any]:
    assert name in COMPOSE_SERVICES, f"docker-compose.yml has no service {name}"
    return COMPOSE_SERVICES[name]


SECRETS = "/var/lib/modelserve/secrets"  # where the `secrets` volume is mounted


@functools.cache
def secrets_dir() -> Path:
    """What `init` writes into the secrets volume: its own command, run here by the real CLI
    with the volume's path replaced by a temporary folder."""
    init = service("init")
    assert init.get("entrypoint") == ["modelserve"], init.get("entrypoint")
    folder = Path(tempfile.mkdtemp(prefix="compose-secrets-"))
    atexit.register(shutil.rmtree, folder, True)
    argv = [a.replace(SECRETS, str(folder)) for a in command(init)]
    proc = subprocess.run(
        [sys.executable, "-m", "modelserve", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"init failed: {proc.stderr}"
    return folder


def in_secrets(env: dict[str, str]) -> dict[str, str]:
    """``env`` with paths in the secrets volume pointing at what ``secrets_dir`` wrote."""
    return {k: v.replace(SECRETS, str(secrets_dir())) for k, v in env.items()}


def settings_of(name: str) -> CommonSettings:
    """The settings the container would start with: compose's env through the real loader
    (whose validation reads the TLS and key files init wrote)."""
    settings: CommonSettings = load_settings(
        spec_of(name).settings_cls, [], in_secrets(environment(service(name)))
    )
    return settings


def value(settings: CommonSettings, field: str) -> Any:
    """A field only some services' settings have (data_dir, online_store, ...)."""
    values = dataclasses.asdict(settings)
    assert field in values, f"{type(settings).__name__} has no setting {field}"
    return values[field]


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}


def test_the_five_services_and_the_infrastructure_are_defined() -> None:
    assert set(SERVICES) <= set(COMPOSE_SERVICES), set(SERVICES) - set(COMPOSE_SERVICES)
    for name, repository in INFRASTRUCTURE.items():
        image = str(service(name).get("image", ""))
        repo, _, tag = image.partition(":")
        assert repo == repository, f"{name} runs {image}; expected {repository}"
        assert tag and tag != "latest", f"{name} image {image} is not pinned to a version"


@pytest.mark.parametrize("name", SERVICES)
def test_service_builds_the_project_image(name: str) -> None:
    build = service(name).get("build")
    assert isinstance(build, dict), f"{name} does not build from the project's Dockerfile"
    context = (COMPOSE.parent / str(build.get("context", "."))).resolve()
    dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
    assert context == ROOT and dockerfile == ROOT / "Dockerfile", f"{name} builds {dockerfile}"
    stages = load_stages()
    target = str(build.get("target", list(stages)[-1]))
    assert target in stages, f"{name} builds target {target}, not a stage of the Dockerfile"
    entry = effective(stages, target, "ENTRYPOINT")
    assert entry is not None and exec_form(entry) == ["modelserve", "serve"]


@pytest.mark.parametrize("name", SERVICES)
def test_command_names_the_service_package(name: str) -> None:
    # The image's ENTRYPOINT is `modelserve serve`: the command is the service's package name.
    assert command(service(name)) == [name]
    assert spec_of(name).name == name


@pytest.mark.parametrize("name", SERVICES)
def test_environment_sets_only_real_settings(name: str) -> None:
    fields = dataclasses.fields(spec_of(name).settings_cls)
    known = {env for f in fields for env in env_names(f)}
    unknown = sorted(set(environment(service(name))) - known - NOT_SETTINGS)
    assert unknown == [], f"{name} sets env vars that are no setting of it: {unknown}"


@pytest.mark.parametrize("name", SERVICES)
def test_environment_loads_into_container_settings(name: str) -> None:
    settings = settings_of(name)  # validate() runs: bad values fail here
    assert settings.discovery == "consul"
    assert settings.host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    # Left empty on purpose: the container's hostname is what each replica registers.
    assert settings.advertise_host == ""
    assert settings.trace_exporter == "otlp"
    assert name in settings.service_name, f"{name} traces as {settings.service_name!r}"
    assert settings.port > 0, f"{name} would listen on a random port"


@pytest.mark.parametrize("name", SERVICES)
def test_container_ports_are_the_grpc_and_metrics_ports(name: str) -> None:
    """And the gateway's REST port (``http_port``), the only other listener a service has."""
    settings = settings_of(name)
    metrics = settings.resolved_metrics_port(settings.port)
    assert metrics == settings.port + 1, f"{name} metrics on {metrics}, not port + 1"
    default = next(f for f in dataclasses.fields(settings) if f.name == "port").default
    if "MODELSERVE_PORT" not in environment(service(name)):
        assert settings.port == default
    http = getattr(settings, "http_port", 0)
    assert container_ports(service(name)) == {settings.port, metrics} | ({http} if http else set())


@pytest.mark.parametrize("name", SERVICES)
def test_consul_is_the_compose_consul_and_up_first(name: str) -> None:
    address = urlsplit(settings_of(name).consul_addr)
    assert (address.hostname, address.port) == ("consul", 8500)
    assert depends_on(service(name)).get("consul") == "service_healthy"
    assert service("consul").get("healthcheck", {}).get("test"), "consul has no healthcheck"


@pytest.mark.parametrize("name", SERVICES)
def test_traces_go_to_a_compose_collector_on_otlp_grpc(name: str) -> None:
    endpoint = urlsplit(settings_of(name).otlp_endpoint)
    assert endpoint.scheme == "http", "plain-text OTLP/gRPC inside the compose network"
    assert endpoint.hostname in COMPOSE_SERVICES, f"{name} exports to {endpoint.hostname}"
    assert endpoint.port == 4317
    assert 4317 in container_ports(service(str(endpoint.hostname)))


@pytest.mark.parametrize("name", SERVICES)
def test_stop_grace_period_covers_drain_and_grace(name: str) -> None:
    settings = settings_of(name)
    grace = seconds(service(name).get("stop_grace_period", "10s"))
    assert grace >= 45, f"{name} stop_grace_period {grace}s; RELIABILITY.md asks >= 45 s"
    needed = settings.resolved_drain_seconds() + settings.shutdown_grace_seconds
    assert grace > needed, f"{name}: drain + grace = {needed}s but Docker kills at {grace}s"
    assert service(name).get("stop_signal", "SIGTERM") == "SIGTERM"


@pytest.mark.parametrize("name", ["registry", "featurestore"])
def test_state_lives_on_a_named_volume(name: str) -> None:
    data_dir = str(value(settings_of(name), "data_dir"))
    assert data_dir.startswith("/"), f"{name} data_dir {data_dir!r} is relative"
    source = volume_mounts(service(name)).get(data_dir)
    assert source, f"{name} keeps {data_dir} in the container's writable layer"
    assert source in (COMPOSE_DATA.get("volumes") or {}), f"{source} is not a named volume"


def test_featurestore_uses_the_compose_redis() -> None:
    settings = settings_of("featurestore")
    assert value(settings, "online_store") == "redis"
    url = urlsplit(str(value(settings, "redis_url")))
    assert url.scheme == "redis" and url.hostname == "redis" and (url.port or 6379) == 6379
    assert depends_on(service("featurestore")).get("redis") == "service_healthy"


def test_worker_reserves_a_gpu_and_scales() -> None:
    worker = service("worker")
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
        for d in devices
    ), f"worker reserves {devices}"
    # `--scale worker=N` needs every replica to differ: no fixed name, hostname or host port.
    for key in ("container_name", "hostname", "ports"):
        assert key not in worker, f"worker sets {key}, which breaks --scale"
    env = environment(worker)
    assert "MODELSERVE_ADVERTISE_HOST" not in env and "MODELSERVE_INSTANCE_ID" not in env


def test_gateway_publishes_inference_and_metrics() -> None:
    settings = settings_of("gateway")
    assert {settings.port, settings.port + 1} <= published_ports(service("gateway"))


def prometheus_targets() -> set[tuple[str, int]]:
    prometheus = service("prometheus")
    flags = [str(c) for c in prometheus.get("command") or []]
    config_flag = next((f for f in flags if f.startswith("--config.file=")), None)
    config_path = config_flag.split("=", 1)[1] if config_flag else "/etc/prometheus/prometheus.yml"
    source = volume_mounts(prometheus).get(config_path)
    assert source, f"prometheus does not mount its config at {config_path}"
    config = yaml.safe_load((COMPOSE.parent / Path(source)).read_text())
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                targets.add((host, int(port)))
        for dns in job.get("dns_sd_configs") or []:
            if dns.get("type", "SRV") == "A":
                targets |= {(n, int(dns["port"])) for n in dns.get("names") or []}
    return targets


@pytest.mark.parametrize("name", SERVICES)
def test_prometheus_scrapes_the_metrics_port(name: str) -> None:
    settings = settings_of(name)
    metrics = settings.resolved_metrics_port(settings.port)
    assert (name, metrics) in prometheus_targets(), f"prometheus does not scrape {name}:{metrics}"


class _ComposeLoader(yaml.SafeLoader):
    """safe_load plus Compose's `!reset` tag, read as the marker RESET."""


RESET = object()
_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def test_cpu_override_runs_the_worker_without_a_gpu() -> None:
    override_path = ROOT / "deploy" / "docker-compose.cpu.yml"
    override = yaml.load(override_path.read_text(), Loader=_ComposeLoader)
    worker = override["services"]["worker"]
    assert worker["deploy"] is RESET, "the override must drop the worker's GPU reservation"
    target = worker["build"]["target"]
    stages = load_stages()
    assert target in stages
    runs = "\n".join(i.args for s in provenance(stages, target) for i in s.of("RUN"))
    assert "onnxruntime-gpu" not in runs, f"{target} is not the CPU image"
    assert worker["image"] != service("worker")["image"], "CPU worker would reuse the GPU tag"


# --- secure by default --------------------------------------------------------------------

ALL_MODELSERVE = (*SERVICES, "streamer")


@pytest.mark.parametrize("name", ALL_MODELSERVE)
def test_every_service_runs_tls_mtls_and_auth_from_the_secrets_volume(name: str) -> None:
    settings = settings_of(name)
    assert settings.tls_cert_file and settings.tls_ca_file, f"{name} runs plaintext"
    assert settings.auth, f"{name} takes calls without credentials"
    assert settings.tls_require_client_cert == (name != "gateway"), name
    assert Path(settings.auth_keys_file).is_file() and Path(settings.service_token_file).is_file()
    # Read-only, and only once init has finished writing.
    mount = next(v for v in service(name)["volumes"] if str(v).startswith("secrets:"))
    assert mount == f"secrets:{SECRETS}:ro", f"{name} mounts {mount}"
    assert depends_on(service(name)).get("init") == "service_completed_successfully"
    # Hops dial Consul-registered hostnames: every certificate names tls_server_name.
    cert = x509.load_pem_x509_certificate(Path(settings.tls_cert_file).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert settings.tls_server_name in san.get_values_for_type(x509.DNSName), name
    # Its own name is a service SAN, so its calls carry the service identity.
    assert name in san.get_values_for_type(x509.DNSName)
    assert name in settings.tls_service_sans.split(",")


def test_the_admin_plane_wants_the_operators_certificate_except_at_the_gateway() -> None:
    for name in ALL_MODELSERVE:
        expected = "" if name == "gateway" else "client"
        assert settings_of(name).tls_admin_sans == expected, name
    assert (secrets_dir() / "tls" / "client.pem").is_file()
    assert (secrets_dir() / "tokens" / "admin").is_file()


def test_consul_checks_show_a_client_certificate_init_wrote() -> None:
    consul = service("consul")
    args = " ".join(command(consul))
    assert "enable_agent_tls_for_checks = true" in args
    for name in ("ca.pem", "consul.pem", "consul-key.pem"):
        path = f"{SECRETS}/tls/{name}"
        assert path in args, f"consul's tls stanza lacks {name}"
        assert Path(path.replace(SECRETS, str(secrets_dir()))).is_file(), path
    assert f"secrets:{SECRETS}:ro" in consul["volumes"]
    assert depends_on(consul).get("init") == "service_completed_successfully"
    # The key is 0600 and owned by the image's user: consul must run as that uid.
    assert str(consul.get("user", "")).split(":")[0] == "10001"


def test_prometheus_scrapes_https_with_the_ca() -> None:
    prometheus = service("prometheus")
    source = volume_mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load((COMPOSE.parent / Path(source)).read_text())
    assert f"secrets:{SECRETS}:ro" in prometheus["volumes"]
    for job in config["scrape_configs"]:
        if job["job_name"] not in ALL_MODELSERVE:
            continue
        assert job.get("scheme") == "https", job["job_name"]
        tls = job["tls_config"]
        assert tls["ca_file"] == f"{SECRETS}/tls/ca.pem"
        assert tls["server_name"] == settings_of(job["job_name"]).tls_server_name
