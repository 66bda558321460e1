"""CloudWatch metrics without an agent: Embedded Metric Format on the log lines themselves.

A few log events carry a metric. For those, this structlog processor adds the ``_aws``
block and the metric values to the same JSON line, so CloudWatch Logs extracts the metrics
and ops keep one stream. Namespace ``WebhookReceiver`` (env RECEIVER_METRICS_NAMESPACE);
RECEIVER_METRICS=off turns it off (both read at start-up). Dimensions are only ever the
provider (a name in the provider registry, else ``unknown``: a URL must not mint metric
dimensions), a fixed outcome, and an execution's final status (one of CodePipeline's); the
backlog's have none (one series for the whole service, measured by one replica).

| metric | unit | dimensions | from event |
|---|---|---|---|
| Deliveries | Count | provider, outcome | webhook.accepted / duplicate / ignored / rejected |
| PipelinesStarted | Count | provider | pipeline.started |
| PipelineStartFailures | Count | provider | pipeline.start_failed |
| ProcessingTime | Milliseconds | provider | delivery.processed (duration_ms) |
| CompareApiCalls | Count | provider | delivery.processed (compare_api_calls) |
| ExecutionsFinished | Count | status | execution.finished |
| IncompleteDiffs | Count | provider | changes.incomplete (every pipeline counted as changed) |
| ProviderErrors | Count | provider | provider.error (a compare failed: retried, then failed) |
| MissedPushes | Count | provider | reconcile.missed |
| DeliveriesFailed | Count | provider | delivery.failed (attempts used up, also by workers killed) |
| PendingDeliveries | Count | (none) | backlog.measured (pending_deliveries) |
| OldestPendingSeconds | Seconds | (none) | backlog.measured (oldest_pending_seconds) |
| PendingTasks | Count | (none) | backlog.measured (pending_tasks: statuses, notifications) |
| NotificationFailures | Count | (none) | notify.failed (a notification try failed) |
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from typing import Any

_OUTCOMES = {
    "webhook.accepted": "accepted",
    "webhook.duplicate": "duplicate",
    "webhook.ignored": "ignored",
    "webhook.rejected": "rejected",
}


# (name, unit, dimension keys, the event field holding the value or None for a count of one)
# of the metrics each event carries
_METRICS: dict[str, tuple[tuple[str, str, tuple[str, ...], str | None], ...]] = {
    **{event: (("Deliveries", "Count", ("provider", "outcome"), None),) for event in _OUTCOMES},
    "pipeline.started": (("PipelinesStarted", "Count", ("provider",), None),),
    "pipeline.start_failed": (("PipelineStartFailures", "Count", ("provider",), None),),
    "execution.finished": (("ExecutionsFinished", "Count", ("status",), None),),
    "reconcile.missed": (("MissedPushes", "Count", ("provider",), None),),
    "delivery.processed": (("ProcessingTime", "Milliseconds", ("provider",), "duration_ms"),
                           ("CompareApiCalls", "Count", ("provider",), "compare_api_calls")),
    "changes.incomplete": (("IncompleteDiffs", "Count", ("provider",), None),),
    "provider.error": (("ProviderErrors", "Count", ("provider",), None),),
    "delivery.failed": (("DeliveriesFailed", "Count", ("provider",), None),),
    "notify.failed": (("NotificationFailures", "Count", (), None),),
    "backlog.measured": (("PendingDeliveries", "Count", (), "pending_deliveries"),
                         ("OldestPendingSeconds", "Seconds", (), "oldest_pending_seconds"),
                         ("PendingTasks", "Count", (), "pending_tasks")),
}


class EmbeddedMetrics:
    """structlog processor: add Embedded Metric Format to the events that carry a metric.

    Settings are read once (:meth:`from_environ`, at logging set-up), like the rest of the
    start-up configuration: changing the environment later changes nothing."""

    def __init__(self, *, enabled: bool = True, namespace: str = "WebhookReceiver") -> None:
        from providers import REGISTRY  # here: the providers import the logging set-up

        self.enabled = enabled
        self.namespace = namespace
        self._providers = REGISTRY  # the registry itself, so a provider added later counts

    @classmethod
    def from_environ(cls) -> EmbeddedMetrics:
        """RECEIVER_METRICS=off turns metrics off; RECEIVER_METRICS_NAMESPACE names them."""
        return cls(enabled=os.environ.get("RECEIVER_METRICS", "on").lower() != "off",
                   namespace=os.environ.get("RECEIVER_METRICS_NAMESPACE", "WebhookReceiver"))

    def __call__(self, _logger: Any, _name: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        name = str(event.get("event"))
        metrics = _METRICS.get(name)
        if not self.enabled or metrics is None:
            return event
        if event.get("provider") not in self._providers and \
                any("provider" in dims for _m, _u, dims, _f in metrics):
            event["provider"] = "unknown"
        if name in _OUTCOMES:
            event["outcome"] = _OUTCOMES[name]
        directives = []
        for metric, unit, dims, field in metrics:
            event[metric] = 1 if field is None else float(event.get(field, 0))
            directives.append({"Namespace": self.namespace, "Dimensions": [list(dims)],
                               "Metrics": [{"Name": metric, "Unit": unit}]})
        event["_aws"] = {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": directives}
        return event
