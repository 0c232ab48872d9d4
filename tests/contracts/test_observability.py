"""Alert rules and dashboards are checked, not just written: ``promtool check rules`` and the
rules' unit tests (``promtool test rules``) pass, and every series a rule or a dashboard panel
queries is one the services really declare (a renamed metric would leave a panel empty and an
alert silent for ever)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/modelserve.json"
PROMTOOL = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(),
    reason="promtool not installed (./dev installs it from the Debian prometheus package)",
)
SERIES = re.compile(r"\b(modelserve_[a-z_]+?)(?:_bucket|_count|_sum)?\b")
# Recording rules of alerts.yml, used by the dashboard.
RECORDED = re.compile(r"\bmodelserve:[a-z_:0-9]+")


def declared_metrics() -> set[str]:
    """Every metric name declared in the services' source (Counter/Gauge/Histogram names)."""
    found: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        text = path.read_text()
        found |= set(re.findall(r'"(modelserve_[a-z_]+)"', text))
    return found | {n.removesuffix("_total") for n in found}


def queried(text: str) -> set[str]:
    names = set()
    for name in SERIES.findall(text):
        if name.startswith("modelserve_"):
            names.add(name)
    return names


@needs_promtool
def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [PROMTOOL, "test", "rules", str(ALERTS.with_name("alerts_test.yml"))],
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rules_and_panels_query_only_declared_series() -> None:
    declared = declared_metrics()
    rules = ALERTS.read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    missing = {n for n in queried(rules) | queried("\n".join(exprs)) if n not in declared}
    assert not missing, f"queried but declared by no service: {sorted(missing)}"
    recorded = set(re.findall(r"record: (modelserve:[a-z_:0-9]+)", rules))
    used = {n for e in exprs for n in RECORDED.findall(e)}
    assert used <= recorded, f"dashboard uses unrecorded rules: {sorted(used - recorded)}"


def test_the_dashboard_covers_what_operators_look_at() -> None:
    titles = " | ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"])
    for topic in ("Latency budget", "per model version", "Canary", "Shadow", "Cache", "lag"):
        assert topic in titles, f"no panel on {topic!r}: {titles}"
