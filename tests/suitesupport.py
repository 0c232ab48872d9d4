"""Helpers for suites of real processes (imported by e2e conftest and tests)."""

from __future__ import annotations

from modelserve.cli.suite import SERVICES, Suite, wait_serving
from modelserve.cli.up import register_demo_models, wait_models_ready


def dump_logs(suite: Suite) -> str:
    out = []
    for name, proc in suite.processes.items():
        text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
        out.append(f"----- {name} -----\n{text[-4000:]}")
    return "\n".join(out)


async def ready_suite(suite: Suite) -> Suite:
    tls = suite.client_tls
    for name in SERVICES:
        await wait_serving(suite.address(name), timeout=60, tls=tls)
    admin = suite.token("admin")
    names = await register_demo_models(suite.address("registry"), suite.data_dir, tls, admin)
    await wait_models_ready(suite.address("gateway"), names, timeout=120, tls=tls, token=admin)
    return suite
