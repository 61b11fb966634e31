"""Deployment files: compose validates, Prometheus config and alert rules check and pass their
unit tests, and every metric the dashboard and alerts name exists in the daemon's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from daemon.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tagspace.json"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (Debian package)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_compose_file_is_valid():
    out = run(tool("docker-compose"), "-f", "docker-compose.yml", "config")
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"kafka", "redis", "daemon", "prometheus", "grafana"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]


def test_prometheus_config_rules_and_alert_unit_tests():
    promtool = tool("promtool")
    for argv in (("check", "config", str(PROM / "prometheus.yml")),
                 ("check", "rules", str(PROM / "alerts.yml")),
                 ("test", "rules", str(PROM / "alerts_test.yml"))):
        out = run(promtool, *argv)
        assert out.returncode == 0, out.stdout + out.stderr


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_every_dashboard_query_parses(tmp_path):
    # Grafana is not installable here: each panel query becomes a recording rule for promtool
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = run(tool("promtool"), "check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name the daemon's registry exports (labelled ones included, which have
    no samples until first used)."""
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in SUFFIXES[family.type]}


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\btagspace_[a-z0-9_]+", expr))


def test_every_metric_named_by_dashboard_and_alerts_exists():
    alerts = yaml.safe_load((PROM / "alerts.yml").read_text())
    exprs = dashboard_exprs() + [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    names = exported_names()
    missing = {n for e in exprs for n in referenced(e)} - names
    assert not missing, f"named but not exported: {sorted(missing)}"
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert any("lag" in t.lower() for t in titles) and any("P@1" in t for t in titles)
