"""CloudWatch Embedded Metric Format on the log lines."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.metrics import EmbeddedMetrics

emf = EmbeddedMetrics()


def directives(line: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    return [(m["Name"], m["Unit"], d["Dimensions"][0])
            for d in line["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]


@pytest.mark.parametrize(("event", "outcome"), [
    ("webhook.accepted", "accepted"), ("webhook.duplicate", "duplicate"),
    ("webhook.ignored", "ignored"), ("webhook.rejected", "rejected"),
])
def test_every_delivery_outcome_counts_by_provider_and_outcome(event: str, outcome: str) -> None:
    line = emf(None, "info", {"event": event, "provider": "gitlab", "delivery_id": "d"})
    assert directives(line) == [("Deliveries", "Count", ["provider", "outcome"])]
    assert (line["Deliveries"], line["provider"], line["outcome"]) == (1, "gitlab", outcome)
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "WebhookReceiver"
    assert isinstance(line["_aws"]["Timestamp"], int)


def test_processing_line_carries_time_and_compare_calls() -> None:
    line = emf(None, "info", {"event": "delivery.processed", "provider": "github",
                              "duration_ms": 12.5, "compare_api_calls": 2})
    assert directives(line) == [("ProcessingTime", "Milliseconds", ["provider"]),
                                ("CompareApiCalls", "Count", ["provider"])]
    assert (line["ProcessingTime"], line["CompareApiCalls"]) == (12.5, 2)


def test_pipeline_starts_and_failures_are_counted() -> None:
    assert directives(emf(None, "info", {"event": "pipeline.started", "provider": "github"})) \
        == [("PipelinesStarted", "Count", ["provider"])]
    assert directives(emf(None, "info", {"event": "pipeline.start_failed",
                                         "provider": "github"})) \
        == [("PipelineStartFailures", "Count", ["provider"])]


@pytest.mark.parametrize(("event", "metric"), [
    ("changes.incomplete", "IncompleteDiffs"), ("provider.error", "ProviderErrors"),
])
def test_incomplete_diffs_and_provider_errors_are_counted_by_provider(event: str,
                                                                      metric: str) -> None:
    line = emf(None, "warning", {"event": event, "provider": "bitbucket-server",
                                 "error": "the token cannot read it"})
    assert directives(line) == [(metric, "Count", ["provider"])]
    assert (line[metric], line["provider"]) == (1, "bitbucket-server")


def test_unknown_provider_path_cannot_mint_a_dimension_value() -> None:
    line = emf(None, "info", {"event": "webhook.rejected", "provider": "x" * 40})
    assert line["provider"] == "unknown"


def test_other_events_carry_no_metric() -> None:
    line = {"event": "baseline.advanced", "provider": "github"}
    assert "_aws" not in emf(None, "debug", dict(line))


def test_metrics_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_METRICS", "off")
    off = EmbeddedMetrics.from_environ()
    assert "_aws" not in off(None, "info", {"event": "webhook.accepted", "provider": "github"})


def test_namespace_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_METRICS_NAMESPACE", "Team/Webhooks")
    line = EmbeddedMetrics.from_environ()(None, "info", {"event": "pipeline.started",
                                                          "provider": "github"})
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Team/Webhooks"



def test_execution_finished_counts_by_final_status_without_a_provider_dimension(
        capsys: pytest.CaptureFixture[str]) -> None:
    from receiver.metrics import EmbeddedMetrics

    line = EmbeddedMetrics()(None, "info", {"event": "execution.finished", "status": "Failed"})
    directives = line["_aws"]["CloudWatchMetrics"]
    assert directives[0]["Dimensions"] == [["status"]]
    assert directives[0]["Metrics"] == [{"Name": "ExecutionsFinished", "Unit": "Count"}]
    assert line["ExecutionsFinished"] == 1 and "provider" not in line
