"""Import direction and package names (CONVENTIONS.md): services depend on the runtime, the
runtime never imports a service, services never import each other, and every top-level name
resolves to this repository (no PyPI package can shadow it)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "router", "worker", "registry", "featurestore")
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


# The top floor (CONVENTIONS.md: cli/ is the only code that names services) may: batch jobs
# score with the worker's own session code, through one adapter module and nowhere else.
TOP_FLOOR_ADAPTERS = {ROOT / "services" / "modelserve" / "batch" / "scoring.py": {"worker"}}


def test_runtime_never_imports_a_service() -> None:
    for path, names in _imports("modelserve").items():
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
