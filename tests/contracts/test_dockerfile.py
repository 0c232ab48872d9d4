"""Static checks of the Dockerfile and .dockerignore: the images build the project from
pyproject.toml, run as a non-root user, stop on SIGTERM, and the worker's image carries
onnxruntime-gpu instead of onnxruntime. No Docker engine is needed."""

from __future__ import annotations

import importlib
import re
import tomllib

import pytest
from deploy_files import (
    ROOT,
    Stage,
    chain,
    context_copies,
    copy_from,
    dockerignore_rules,
    effective,
    exec_form,
    ignored,
    load_compose,
    load_stages,
    provenance,
)

STAGES = load_stages()
BASE_IMAGE = re.compile(r"python:3\.11(?:\.\d+)?-slim(?:-\w+)?(?:@sha256:[0-9a-f]{64})?\Z")


def final_targets() -> list[str]:
    """Stages no other stage builds FROM or copies from: the images someone runs."""
    used = {s.base for s in STAGES.values()}
    used |= {copy_from(i) for s in STAGES.values() for i in s.of("COPY")} - {None}
    return [name for name in STAGES if name not in used]


def compose_target(service: str) -> str:
    build = load_compose()["services"][service]["build"]
    target = build.get("target") if isinstance(build, dict) else None
    assert target, f"compose service {service} builds without a target"
    return str(target)


def run_text(stages: list[Stage]) -> str:
    return "\n".join(i.args for s in stages for i in s.of("RUN"))


def test_the_final_images_are_the_cpu_runtime_and_the_gpu_worker() -> None:
    assert sorted(final_targets()) == ["runtime", "worker-gpu"]
    # `docker build .` builds the last stage: the small CPU image, not the GPU one.
    assert list(STAGES)[-1] == "runtime"


def test_every_stage_starts_from_python_311_slim_or_another_stage() -> None:
    for stage in STAGES.values():
        assert stage.base in STAGES or BASE_IMAGE.match(stage.base), (
            f"stage {stage.name} starts FROM {stage.base}; expected python:3.11-slim"
        )


@pytest.mark.parametrize("target", final_targets())
def test_image_runs_as_a_non_root_user(target: str) -> None:
    user = effective(STAGES, target, "USER")
    assert user is not None, f"{target} has no USER: it would run as root"
    name = user.args.split(":")[0]
    assert name not in ("root", "0", ""), f"{target} runs as {user.args}"
    created = run_text(chain(STAGES, target))
    assert re.search(rf"useradd\b[^\n]*\b{re.escape(name)}\b", created), (
        f"{target} runs as {name}, which no RUN useradd creates"
    )


@pytest.mark.parametrize("target", final_targets())
def test_image_stops_on_sigterm(target: str) -> None:
    stop = effective(STAGES, target, "STOPSIGNAL")
    assert stop is not None and stop.args in ("SIGTERM", "15"), (
        f"{target} STOPSIGNAL is {stop.args if stop else 'unset'}; the drain runs on SIGTERM"
    )


@pytest.mark.parametrize("target", final_targets())
def test_entrypoint_is_modelserve_serve_in_exec_form(target: str) -> None:
    entry = effective(STAGES, target, "ENTRYPOINT")
    assert entry is not None, f"{target} has no ENTRYPOINT"
    # Exec form, so the Python process is PID 1 and receives SIGTERM (a shell would not pass it).
    assert exec_form(entry) == ["modelserve", "serve"]


def test_modelserve_console_script_exists() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    target = project["scripts"]["modelserve"]
    assert target == "modelserve.cli.main:command"
    module, _, name = target.partition(":")
    assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize("target", final_targets())
def test_image_installs_the_project_from_pyproject(target: str) -> None:
    stages = provenance(STAGES, target)
    copied = {
        word.rstrip("/")
        for s in stages
        for i in s.of("COPY")
        if copy_from(i) is None
        for word in i.args.split()[:-1]
    }
    assert {"pyproject.toml", "services"} <= copied, f"{target} copies only {sorted(copied)}"
    # `.` or `".[extras]"` (the image adds the postgres extra for the registry).
    assert re.search(
        r"pip install (?:[^\n]* )?\"?\.(?:\[[\w,-]+\])?\"?(?:\s|$)", run_text(stages)
    ), f"{target} never runs `pip install .`"


def test_worker_image_installs_onnxruntime_gpu_instead_of_onnxruntime() -> None:
    target = compose_target("worker")
    runs = run_text(provenance(STAGES, target))
    assert re.search(r"pip install [^\n]*onnxruntime-gpu", runs), f"{target}: no onnxruntime-gpu"
    # Both distributions own the onnxruntime/ package files: the CPU one must be removed first.
    assert re.search(r"pip uninstall -y onnxruntime(?:\s|$)", runs), (
        f"{target} installs onnxruntime-gpu beside onnxruntime"
    )
    assert runs.index("pip uninstall -y onnxruntime") < runs.index("onnxruntime-gpu")


@pytest.mark.parametrize("service", ["gateway", "router", "registry", "featurestore"])
def test_other_services_use_the_cpu_image(service: str) -> None:
    target = compose_target(service)
    assert "onnxruntime-gpu" not in run_text(provenance(STAGES, target)), (
        f"{service} builds {target}, which carries the GPU runtime it does not use"
    )


def test_dockerignore_keeps_what_the_build_copies() -> None:
    rules = dockerignore_rules()
    for source in context_copies(STAGES):
        assert not ignored(source, rules), f".dockerignore drops {source}, which COPY needs"
    shipped = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "services").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    ]
    assert any(p.startswith("services/modelserve/proto/") for p in shipped)
    dropped = [p for p in shipped if ignored(p, rules)]
    assert dropped == [], f".dockerignore drops package files: {dropped[:5]}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".modelserve-data/registry/registry.sqlite",
        "services/modelserve/__pycache__/server.cpython-311.pyc",
        "services/modelserve.egg-info/PKG-INFO",
        "tests/contracts/test_dockerfile.py",
    ],
)
def test_dockerignore_drops_local_state(path: str) -> None:
    assert ignored(path, dockerignore_rules()), f"{path} would be sent to the Docker daemon"
