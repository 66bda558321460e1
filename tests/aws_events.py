"""EventBridge pipeline-execution events as AWS publishes them (tests/fixtures/codepipeline/).

The bytes are AWS's documentation examples; only what must point at the test's own
execution is replaced, as text, so every other byte (the float ``1.0`` attempts and
versions among them) stays as AWS writes it.
"""

from __future__ import annotations

import json

from tests.harness import fixture_bytes

# the published example per state; the states with no pipeline-level example reuse the
# FAILED one with only its `state` value replaced
_SAMPLES = {"STARTED": "aws-docs-pipeline-started.json",
            "SUCCEEDED": "aws-docs-pipeline-succeeded.json",
            "FAILED": "aws-docs-pipeline-failed.json"}
_EXECUTION = b'"12345678-1234-5678-abcd-12345678abcd"'
_ATTEMPT = b'"pipeline-execution-attempt": 1.0'


def aws_event(pipeline: str, execution_id: str, state: str, attempt: int = 1) -> bytes:
    """The published event for ``state`` about ``pipeline``'s execution ``execution_id``,
    at ``attempt`` (written as AWS writes it: ``2.0``)."""
    raw = fixture_bytes(f"codepipeline/{_SAMPLES.get(state, _SAMPLES['FAILED'])}")
    if state not in _SAMPLES:
        raw = raw.replace(b'"state": "FAILED"', b'"state": ' + _json(state))
    raw = raw.replace(b"myPipeline", _json(pipeline)[1:-1]).replace(_EXECUTION,
                                                                   _json(execution_id))
    assert _ATTEMPT in raw
    return raw.replace(_ATTEMPT, b'"pipeline-execution-attempt": %d.0' % attempt)


def _json(text: str) -> bytes:
    return json.dumps(text).encode()
