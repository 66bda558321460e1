"""CloudWatch metrics without an agent: Embedded Metric Format on the log lines themselves.

A few log events carry a metric. For those, this structlog processor adds the ``_aws``
block and the metric values to the same JSON line, so CloudWatch Logs extracts the metrics
and ops keep one stream. Namespace ``WebhookReceiver`` (env RECEIVER_METRICS_NAMESPACE);
RECEIVER_METRICS=off turns it off. Dimensions are only ever the provider (one of the four
known names, else ``unknown``: a URL must not mint metric dimensions) and a fixed outcome.

| metric | unit | dimensions | from event |
|---|---|---|---|
| Deliveries | Count | provider, outcome | webhook.accepted / duplicate / ignored / rejected |
| PipelinesStarted | Count | provider | pipeline.started |
| PipelineStartFailures | Count | provider | pipeline.start_failed |
| ProcessingTime | Milliseconds | provider | delivery.processed (duration_ms) |
| CompareApiCalls | Count | provider | delivery.processed (compare_api_calls) |
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from typing import Any

KNOWN_PROVIDERS = frozenset({"github", "gitlab", "bitbucket", "bitbucket-server"})

_OUTCOMES = {
    "webhook.accepted": "accepted",
    "webhook.duplicate": "duplicate",
    "webhook.ignored": "ignored",
    "webhook.rejected": "rejected",
}


def _metrics_for(event: MutableMapping[str, Any]) -> list[tuple[str, str, float, list[str]]]:
    """(name, unit, value, dimension keys) for one log event."""
    name = event.get("event")
    if name in _OUTCOMES:
        return [("Deliveries", "Count", 1, ["provider", "outcome"])]
    if name == "pipeline.started":
        return [("PipelinesStarted", "Count", 1, ["provider"])]
    if name == "pipeline.start_failed":
        return [("PipelineStartFailures", "Count", 1, ["provider"])]
    if name == "delivery.processed":
        return [("ProcessingTime", "Milliseconds", float(event.get("duration_ms", 0)),
                 ["provider"]),
                ("CompareApiCalls", "Count", float(event.get("compare_api_calls", 0)),
                 ["provider"])]
    return []


def emf(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: add Embedded Metric Format to the events that carry a metric."""
    if os.environ.get("RECEIVER_METRICS", "on").lower() == "off":
        return event
    metrics = _metrics_for(event)
    if not metrics:
        return event
    if event.get("provider") not in KNOWN_PROVIDERS:
        event["provider"] = "unknown"
    if event.get("event") in _OUTCOMES:
        event["outcome"] = _OUTCOMES[str(event["event"])]
    directives = []
    for metric, unit, value, dims in metrics:
        event[metric] = value
        directives.append({
            "Namespace": os.environ.get("RECEIVER_METRICS_NAMESPACE", "WebhookReceiver"),
            "Dimensions": [dims],
            "Metrics": [{"Name": metric, "Unit": unit}],
        })
    event["_aws"] = {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": directives}
    return event
