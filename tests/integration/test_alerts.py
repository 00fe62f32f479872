"""Continuous quality and the alert rules: `producer eval --push-metrics` keeps its figures, and
`producer serve-metrics` exports the latest per index version with the threshold the rules
compare them to; ops/prometheus/alerts.yml is checked by promtool where it is installed, else by
parsing, and every metric it names is one the fleet exports (a rule on a misspelt metric would
never fire)."""

import json
import re
import shutil
import subprocess
from contextlib import closing

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

import workers.metrics  # noqa: F401  (registers the workers' metrics in REGISTRY)
from producer import commands
from producer.api.metrics import ApiMetrics
from producer.exporter import FleetCollector
from tests.integration.conftest import REPO, write_corpus
from tests.integration.test_serve import QUOTES
from workers.core.stores import postgres

ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")
DURATION = re.compile(r"\d+[smhdwy]")
# What the issue asks the rules to watch, by the alert's name.
WATCHED = {
    "FleetRetrievalQualityLow",
    "FleetQueueGrowing",
    "FleetChunksLost",
    "FleetWorkerGone",
    "FleetSearchLogDropping",
}


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"] for rule in group["rules"]]


def exported_names(settings) -> set[str]:
    """Every metric name the fleet's three exporters render: workers, the query service, the exporter."""
    registry = CollectorRegistry()
    registry.register(FleetCollector(settings))
    text = b"".join(generate_latest(r) for r in (registry, ApiMetrics().registry, REGISTRY)).decode()
    return {match.group(1) for match in re.finditer(r"^# TYPE (\w+) ", text, re.MULTILINE)}


def test_the_rules_are_well_formed():
    if PROMTOOL:
        checked = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    found = rules()
    assert {rule["alert"] for rule in found} == WATCHED
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert "for" not in rule or DURATION.fullmatch(rule["for"]), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")") and rule["expr"].count("[") == rule["expr"].count("]")
        for template in re.findall(r"\{\{(.*?)\}\}", yaml.safe_dump(rule["annotations"])):
            assert re.fullmatch(r" \$(value|labels\.\w+)( \| printf \"%\.\df\")? ", template), template


def test_every_metric_a_rule_names_is_exported(make_settings, migrated_url):
    names = exported_names(make_settings(database_url=migrated_url))
    for rule in rules():
        for metric in re.findall(r"\b(fleet_\w+)", rule["expr"]):
            # A counter is exported as NAME and sampled as NAME_total.
            assert metric in names or metric.removesuffix("_total") in names, (rule["alert"], metric)


def test_eval_push_metrics_is_exported_with_the_threshold(make_settings, migrated_url, tmp_path):
    settings = make_settings(database_url=migrated_url, eval_alert_mrr=0.75)
    commands.ingest(settings, write_corpus(tmp_path / "docs"), None, wait=False)
    cases = tmp_path / "eval.jsonl"
    cases.write_text(
        "".join(
            json.dumps({"query": quote, "level": "director_only", "expected_document": path}) + "\n"
            for path, quote in QUOTES.items()
        ),
        encoding="utf-8",
    )
    assert commands.evaluate_live(settings, cases)["pushed"] is False
    with closing(postgres.connect(settings)) as conn:
        assert conn.execute("SELECT count(*) FROM eval_results").fetchone() == (0,)
    result = commands.evaluate_live(settings, cases, "keyword", push=True)
    assert result["pushed"] is True

    registry = CollectorRegistry()
    registry.register(FleetCollector(settings))
    labels = {"index": result["index"], "mode": "keyword"}
    assert registry.get_sample_value("fleet_eval_mrr", labels) == pytest.approx(result["mrr"])
    assert registry.get_sample_value("fleet_eval_hit_at_5", labels) == pytest.approx(result["hit_at_5"])
    assert 0 <= registry.get_sample_value("fleet_eval_age_seconds", labels) < 120
    assert registry.get_sample_value("fleet_eval_alert_mrr") == 0.75
