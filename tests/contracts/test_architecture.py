"""Import direction and package names (CONVENTIONS.md): services depend on the runtime, the
runtime never imports a service, services never import each other, and every top-level name
resolves to this repository (no PyPI package can shadow it)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "router", "worker", "registry", "featurestore", "streamer")
PACKAGES = ("modelserve", *SERVICES)


def _imports(package: str) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in (ROOT / "services" / package).rglob("*.py"):
        if "proto" in path.relative_to(ROOT / "services").parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[path] = names
    return found


CLI_DIR = ROOT / "services" / "modelserve" / "cli"
# Batch jobs score with the worker's own session code, through one adapter module only.
BATCH = CLI_DIR / "batch"
TOP_FLOOR_ADAPTERS = {BATCH / "scoring.py": {"worker"}}


def test_runtime_never_imports_a_service() -> None:
    """Below the CLI (the top floor, which may name services) nothing in modelserve does."""
    for path, names in _imports("modelserve").items():
        if path.is_relative_to(CLI_DIR):
            continue
        assert not names & set(SERVICES), f"{path} imports {names & set(SERVICES)}"


def test_batch_jobs_reach_the_worker_through_one_adapter() -> None:
    for path, names in _imports("modelserve").items():
        if not path.is_relative_to(BATCH):
            continue
        allowed = TOP_FLOOR_ADAPTERS.get(path, set())
        assert not names & (set(SERVICES) - allowed), f"{path} imports {names & set(SERVICES)}"


def test_services_never_import_each_other() -> None:
    for service in SERVICES:
        others = set(SERVICES) - {service}
        for path, names in _imports(service).items():
            assert not names & others, f"{path} imports {names & others}"


def test_every_top_level_package_resolves_to_this_repo() -> None:
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve().is_relative_to(ROOT / "services"), (name, spec.origin)


def test_each_service_has_the_same_shape() -> None:
    for service in SERVICES:
        folder = ROOT / "services" / service
        for module in ("__init__.py", "__main__.py", "settings.py", "service.py"):
            assert (folder / module).exists(), f"{service} lacks {module}"
        package = importlib.import_module(service)
        assert package.SPEC.name == service


# The layering (CONVENTIONS.md, "A layout that shows the architecture"): each layer may import
# only the layers listed for it. The floor knows no domain, no V2 face, no service and no CLI.
FLOOR, CATALOG, V2, CLI = "floor", "catalog", "v2", "cli"
ALLOWED = {
    FLOOR: {FLOOR},
    CATALOG: {FLOOR, CATALOG},
    V2: {FLOOR, CATALOG, V2},
    "gateway": {FLOOR, CATALOG, V2, "gateway"},
    "router": {FLOOR, CATALOG, V2, "router"},
    "worker": {FLOOR, CATALOG, V2, "worker"},
    "registry": {FLOOR, CATALOG, "registry"},
    "featurestore": {FLOOR, "featurestore"},
    "streamer": {FLOOR, "streamer"},  # a V2 client of the gateway: wire contracts only
    CLI: {FLOOR, CATALOG, V2, CLI, *SERVICES},  # the top floor; the only one naming services
}
# `python -m modelserve` has to reach the CLI from the floor's package: an entry point, no code.
ENTRY_SHIMS = {ROOT / "services" / "modelserve" / "__main__.py"}
# cryptography is not among them: services verify RS256/ES256 JWTs with it (pyjwt[crypto]).
CLIENT_ONLY = {"pyarrow", "tqdm", "pyspark"}


def layer_of(module: str) -> str | None:
    """The layer of a first-party module name, None for third-party and generated code."""
    parts = module.split(".")
    if parts[0] in SERVICES:
        return parts[0]
    if parts[0] != "modelserve":
        return None
    if len(parts) > 1 and parts[1] == "proto":
        return None  # generated contracts: anyone may use them
    if len(parts) > 1 and parts[1] in (CATALOG, V2, CLI):
        return parts[1]
    return FLOOR


def _modules(path: Path) -> tuple[str, set[str]]:
    """(the module's own name, every module it imports), relative imports resolved."""
    relative = path.relative_to(ROOT / "services").with_suffix("")
    own = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join([*own.split(".")[: -node.level], node.module])
            imported.add(base)
            imported |= {f"{base}.{alias.name}" for alias in node.names}
    return own, imported


def _first_party_files() -> list[Path]:
    return [
        p
        for package in PACKAGES
        for p in (ROOT / "services" / package).rglob("*.py")
        if "proto" not in p.relative_to(ROOT / "services").parts
    ]


def test_every_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for path in _first_party_files():
        if path in ENTRY_SHIMS:
            continue
        own, imported = _modules(path)
        mine = layer_of(own)
        assert mine is not None, own
        for module in imported:
            theirs = layer_of(module)
            if theirs is not None and theirs not in ALLOWED[mine]:
                wrong.append(f"{own} ({mine}) imports {module} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_layer_check_sees_a_wrong_import() -> None:
    """The check above must be able to fail: a floor module importing the catalog is caught."""
    assert layer_of("modelserve.catalog.replica") == CATALOG
    assert CATALOG not in ALLOWED[layer_of("modelserve.server") or ""]
    assert layer_of("modelserve.proto.inference.grpc_service_pb2") is None
    assert layer_of("router.dataplane") not in ALLOWED["gateway"]


def test_services_and_the_lower_floors_need_no_client_only_dependency() -> None:
    for path in _first_party_files():
        own, imported = _modules(path)
        if layer_of(own) == CLI:
            continue
        roots = {m.split(".")[0] for m in imported}
        assert not roots & CLIENT_ONLY, f"{own} imports {roots & CLIENT_ONLY}"


def test_one_v2_servicer_and_one_server_version() -> None:
    """The V2 face is implemented once; every other V2 answer comes from a data plane."""
    subclasses = []
    versions = []
    for path in _first_party_files():
        text = path.read_text()
        if "GRPCInferenceServiceServicer)" in text:
            subclasses.append(path.relative_to(ROOT).as_posix())
        if 'version="' in text and "ServerMetadataResponse" in text:
            versions.append(path.relative_to(ROOT).as_posix())
    assert subclasses == ["services/modelserve/v2/servicer.py"]
    assert versions == [], f"hard-coded server versions in {versions}"


def test_each_data_plane_service_has_one_dataplane_module() -> None:
    for service in ("gateway", "router", "worker"):
        assert (ROOT / "services" / service / "dataplane.py").exists(), service
