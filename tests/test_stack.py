"""deploy/stack.yaml: cfn-lint clean, and in agreement with what the repository already checks.

The template is rendered offline (parameters, pseudo parameters, conditions and the few
intrinsic functions it uses resolved to plain values), so its task definition can be
compared with ecs-task.json field by field and run through the same Fargate checks
(tests/test_ecs_task.py), and its IAM policies compared with the reviewed policy files in
config/. ecs-task.json stays the source the other tests check; the stack must equal it.

The execution-outcome resources (EventBridge rule, connection, API destination, invoke role)
are also in config/eventbridge-outcomes.yaml for deployments without the stack: both
templates render to the same resources, and what they send is checked against the service
itself - the rule's pattern against receiver/outcomes.py, and the request the API destination
makes against a running service.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from cfnlint.api import lint
from moto.events.models import EventPattern

from receiver import metrics, outcomes
from receiver.state import dynamodb
from tests.harness import Service
from tests.test_ecs_task import (
    EXECUTION_ROLE_POLICY,
    PRODUCTION_CONFIG,
    TASK_FILE,
    TASK_ROLE_POLICY,
    grants,
    policy_problems,
    service_container,
    task_problems,
)

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy" / "stack.yaml"
DOCKERFILE = ROOT / "Dockerfile"
OUTCOMES_SNIPPET = ROOT / "config" / "eventbridge-outcomes.yaml"
TABLE_SNIPPET = ROOT / "config" / "dynamodb-table.yaml"
# checkov pins boto3, packaging and networkx far below what the service is tested with, so it
# lives in its own venv, which .ci/run makes (python3 -m venv .venv-checkov && ...)
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
# pinned: a new release's new checks change the suite only when someone bumps it
# (docs/deploy.md); it pins boto3 1.35.49, packaging < 24 and networkx < 2.7, so it cannot
# share the test venv (the service would be tested against another boto3)
CHECKOV_VERSION = "3.3.30"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
OUTCOME_RESOURCES = ("OutcomesConnection", "OutcomesDestination", "OutcomesInvokeRole",
                     "OutcomesRule")
ACCOUNT = "123456789012"  # the account of ecs-task.json and the policy files
REGION = "us-east-1"
# the stack's secret parameters and the environment variable each one fills
SECRET_PARAMETERS = {"GITHUB_WEBHOOK_SECRET": "GitHubWebhookSecretArn",
                     "GITHUB_TOKEN": "GitHubTokenArn",
                     "GITLAB_WEBHOOK_TOKEN": "GitLabWebhookTokenArn",
                     "GITLAB_TOKEN": "GitLabTokenArn",
                     "EVENTS_API_KEY": "EventsApiKeySecretArn"}
# resources whose Ref is a name given by one of their properties
NAMED_BY = {"AWS::Logs::LogGroup": "LogGroupName", "AWS::DynamoDB::Table": "TableName"}


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags turned into their long forms."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _tag)


def load_stack(text: str | None = None) -> dict[str, Any]:
    """The template as a document with long-form intrinsic functions."""
    doc = yaml.load(STACK.read_text() if text is None else text, Loader=_Loader)
    assert isinstance(doc, dict)
    return doc


def task_json() -> dict[str, Any]:
    doc = json.loads(TASK_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def production_parameters() -> dict[str, str]:
    """Parameter values for the deployment ecs-task.json describes (its secrets' ARNs)."""
    container = service_container(task_json())
    assert container is not None
    by_name = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    return {param: by_name[env] for env, param in SECRET_PARAMETERS.items()} | {
        "CertificateArn": f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0f6c-example",
        "VpcId": "vpc-0example", "PublicSubnetIds": "subnet-0public",
        "PrivateSubnetIds": "subnet-0private", "ServiceHostName": "webhooks.example.com",
        "PipelineNamePrefix": "acme-"}


class Renderer:
    """Resolves the intrinsic functions of one template for one set of parameter values."""

    def __init__(self, doc: dict[str, Any], parameters: dict[str, str]) -> None:
        """``parameters`` may also set pseudo parameters (``AWS::Region``, ``AWS::Partition``)."""
        self.doc = doc
        self.values: dict[str, Any] = {
            name: parameters.get(name, spec.get("Default"))
            for name, spec in doc.get("Parameters", {}).items()}
        missing = [n for n, v in self.values.items() if v is None]
        self.values |= {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                        "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
                        "AWS::StackName": "webhook-receiver"}
        self.values |= {k: v for k, v in parameters.items() if k.startswith("AWS::")}
        self.missing = missing

    def condition(self, name: str) -> bool:
        return bool(self.render(self.doc["Conditions"][name]))

    def ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        resource = self.doc["Resources"][name]
        prop = NAMED_BY.get(resource["Type"])
        return self.render(resource["Properties"][prop]) if prop else f"{name}-id"

    def attribute(self, name: str, attribute: str) -> str:
        resource = self.doc["Resources"][name]
        if attribute == "Arn" and resource["Type"] == "AWS::IAM::Role":
            return f"arn:aws:iam::{ACCOUNT}:role/{name}"
        if attribute == "Arn" and resource["Type"] == "AWS::DynamoDB::Table":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{self.ref(name)}"
        if attribute == "Arn" and resource["Type"] == "AWS::S3::Bucket":
            return f"arn:aws:s3:::{self.ref(name)}"
        return f"{name}.{attribute}"

    def sub(self, arg: str | list[Any]) -> str:
        """Fn::Sub in both forms: a string, or [string, {name: value}]."""
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.render(arg[1]))

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and name.split(".")[0] in self.doc["Resources"]:
                return self.attribute(*name.split(".", 1))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def find_in_map(self, arg: list[Any]) -> Any:
        """Fn::FindInMap; a missing key raises KeyError, as CloudFormation fails the stack."""
        name, top, second = (self.render(a) for a in arg)
        return self.doc["Mappings"][name][top][second]

    def exists(self, name: str) -> bool:
        """Whether CloudFormation creates the resource (its Condition, if any, holds)."""
        condition = self.doc["Resources"][name].get("Condition")
        return condition is None or self.condition(condition)

    def render(self, node: Any) -> Any:
        """``node`` with every intrinsic function replaced by its value (AWS::NoValue drops)."""
        if isinstance(node, list):
            return [r for r in (self.render(n) for n in node) if r is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if key == "Fn::Sub":
                return self.sub(arg)
            if key == "Fn::GetAtt":
                return self.attribute(*arg)
            if key == "Fn::FindInMap":
                return self.find_in_map(arg)
            if key == "Fn::If":
                name, then, otherwise = arg
                return self.render(then if self.condition(name) else otherwise)
            if key == "Fn::Equals":
                return self.render(arg[0]) == self.render(arg[1])
            if key == "Fn::Not":
                return not self.render(arg[0])
            assert not key.startswith("Fn::"), f"the renderer does not know {key}"
        out = {k: self.render(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}

    def resource(self, name: str) -> dict[str, Any]:
        rendered = self.render(self.doc["Resources"][name])
        assert isinstance(rendered, dict)
        return rendered


_NO_VALUE = object()


def render(parameters: dict[str, str] | None = None,
           doc: dict[str, Any] | None = None) -> Renderer:
    renderer = Renderer(doc or load_stack(), production_parameters() | (parameters or {}))
    assert renderer.missing == []
    return renderer


def _api_case(node: Any) -> Any:
    """CloudFormation's PascalCase property names as the ECS API's camelCase ones.

    Map keys that are values, not property names (awslogs options), keep their spelling.
    """
    if isinstance(node, list):
        return [_api_case(n) for n in node]
    if not isinstance(node, dict):
        return node
    return {k[0].lower() + k[1:]: (v if k == "Options" else _api_case(v))
            for k, v in node.items()}


def stack_task_definition(parameters: dict[str, str] | None = None) -> dict[str, Any]:
    """The stack's task definition in the shape of ecs-task.json (RegisterTaskDefinition)."""
    properties = render(parameters).resource("TaskDefinition")["Properties"]
    task = _api_case(properties)
    assert isinstance(task, dict)
    return task


# --- cfn-lint --------------------------------------------------------------------------


@pytest.mark.parametrize("template", [STACK, OUTCOMES_SNIPPET], ids=lambda p: p.name)
def test_cfn_lint_finds_nothing_in_the_template(template: Path) -> None:
    # no ignore_checks in the templates: any error or warning fails here
    assert [str(m) for m in lint(template.read_text())] == []


def test_cfn_lint_catches_a_broken_copy() -> None:
    broken = STACK.read_text().replace("HealthCheckIntervalSeconds: 15",
                                       "HealthCheckIntervalSeconds: 1")
    assert broken != STACK.read_text()
    assert any("HealthCheckIntervalSeconds" in m.path_string or "minimum" in str(m)
               for m in lint(broken))


# --- checkov ---------------------------------------------------------------------------


def _checkov(files: list[Path]) -> dict[Path, list[dict[str, Any]]]:
    """checkov's failed and skipped checks of each file (every framework, as
    ``checkov -f FILE ...`` runs them), offline."""
    if not CHECKOV.exists():  # the first run anywhere makes its venv (PyPI, once)
        subprocess.run([sys.executable, "-m", "venv", str(CHECKOV.parent.parent)], check=True)
        subprocess.run([str(CHECKOV.parent / "pip"), "install", "-q",
                        f"checkov=={CHECKOV_VERSION}"], check=True, timeout=900)
    argv = [str(CHECKOV), *(a for f in files for a in ("-f", str(f))), "--skip-download",
            "--output", "json"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    found: dict[Path, list[dict[str, Any]]] = {f.resolve(): [] for f in files}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["check_type"]
        for check in (*report["results"]["failed_checks"],
                      *report["results"]["skipped_checks"]):
            found[(ROOT / check["file_abs_path"]).resolve()].append(check)
    # exit 1 exactly when something failed: the findings above are all there is
    failed = any(c["check_result"]["result"] == "FAILED" for cs in found.values() for c in cs)
    assert result.returncode == int(failed), result.stderr[-2000:]
    return found


def _without_access_logs(text: str) -> str:
    return re.sub(r"^ +- \{Key: access_logs\.s3\.enabled.*\n", "", text, flags=re.M)


def _log_group_without_key(text: str) -> str:
    return text.replace("      KmsKeyId: !If [HasKmsKey, !Ref KmsKeyArn, !Ref AWS::NoValue]\n",
                        "")


def _base_without_tag(text: str) -> str:
    return re.sub(r"^FROM python:\S+ AS base$", "FROM python AS base", text, flags=re.M)


BROKEN_COPIES = [  # (file, change, the check that must fail)
    pytest.param(STACK, _without_access_logs, "CKV_AWS_91", id="no load balancer access logs"),
    pytest.param(STACK, _log_group_without_key, "CKV_AWS_158", id="no key option on the log group"),
    pytest.param(DOCKERFILE, _base_without_tag, "CKV_DOCKER_7", id="a base image without a tag"),
]


@dataclass
class CheckovRun:
    """checkov's findings over the real files and the broken copies (by the check each one
    must fail)."""

    findings: dict[Path, list[dict[str, Any]]]
    copies: dict[str, Path]


@pytest.fixture(scope="module")
def checkov_run(tmp_path_factory: pytest.TempPathFactory) -> CheckovRun:
    """One checkov run over the real files and every broken copy (each in its own directory,
    under its own name: checkov tells a Dockerfile by its name)."""
    copies: dict[str, Path] = {}
    for case in BROKEN_COPIES:
        source, change, check_id = case.values
        broken = tmp_path_factory.mktemp("broken") / source.name
        broken.write_text(change(source.read_text()))
        assert broken.read_text() != source.read_text(), case.id
        copies[check_id] = broken.resolve()
    return CheckovRun(_checkov([STACK, DOCKERFILE, *copies.values()]), copies)


def test_checkov_fails_nothing_in_the_stack_and_the_dockerfile(checkov_run: CheckovRun) -> None:
    findings = [c for f in (STACK, DOCKERFILE) for c in checkov_run.findings[f]]
    assert [(c["check_id"], c["file_path"]) for c in findings
            if c["check_result"]["result"] != "SKIPPED"] == []
    # a skip is an inline `checkov:skip=ID:reason` in the file, and the reason says why
    for skipped in findings:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 40, skipped["check_id"]


@pytest.mark.parametrize(("source", "change", "check_id"), BROKEN_COPIES)
def test_checkov_catches_a_broken_copy(checkov_run: CheckovRun, source: Path,
                                       change: Callable[[str], str], check_id: str) -> None:
    broken = checkov_run.copies[check_id]
    failed = {c["check_id"] for c in checkov_run.findings[broken]
              if c["check_result"]["result"] == "FAILED"}
    assert failed == {check_id}


# --- the task definition agrees with ecs-task.json ------------------------------------


def test_stack_task_definition_equals_ecs_task_json_but_for_the_role_arns() -> None:
    stack, task = stack_task_definition(), task_json()
    for role in ("taskRoleArn", "executionRoleArn"):
        assert stack.pop(role).startswith(f"arn:aws:iam::{ACCOUNT}:role/")
        task.pop(role)
    assert stack == task


def test_stack_task_definition_passes_the_fargate_checks_of_ecs_task_json() -> None:
    # including: every env:NAME of config/production.yaml is a `secrets` entry
    assert task_problems(stack_task_definition()) == []


def test_agreement_check_fails_when_the_stack_drifts() -> None:
    doc = load_stack()
    container = doc["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    container["Secrets"] = container["Secrets"][1:]
    properties = Renderer(doc, production_parameters()).resource("TaskDefinition")["Properties"]
    drifted = _api_case(properties)
    assert task_problems(drifted)  # GITHUB_WEBHOOK_SECRET is no longer injected
    assert drifted != task_json()


def test_exec_on_makes_the_root_filesystem_writable_and_changes_nothing_else() -> None:
    off, on = stack_task_definition(), stack_task_definition({"EnableExecuteCommand": "true"})
    assert on["containerDefinitions"][0].pop("readonlyRootFilesystem") is False
    assert off["containerDefinitions"][0].pop("readonlyRootFilesystem") is True
    assert on == off


@pytest.mark.parametrize(("value", "enabled"), [("false", False), ("true", True)])
def test_exec_permissions_exist_only_when_exec_is_on(value: str, enabled: bool) -> None:
    renderer = render({"EnableExecuteCommand": value})
    doc = renderer.doc
    assert renderer.resource("Service")["Properties"]["EnableExecuteCommand"] is enabled
    assert doc["Resources"]["ExecPolicy"]["Condition"] == "ExecEnabled"
    assert renderer.condition("ExecEnabled") is enabled
    actions = {a for a, _ in grants(renderer.resource("ExecPolicy")["Properties"]
                                    ["PolicyDocument"])}
    assert actions == {f"ssmmessages:{verb}{kind}Channel"
                       for verb in ("Create", "Open") for kind in ("Control", "Data")}


# --- the table and the IAM policies ----------------------------------------------------


def test_stack_table_is_what_state_init_creates() -> None:
    props = render().resource("StateTable")["Properties"]
    want = dynamodb.table_definition(props["TableName"])
    for key in ("TableName", "BillingMode", "AttributeDefinitions", "KeySchema",
                "GlobalSecondaryIndexes"):
        assert props[key] == want[key], key
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["TableName"] == yaml.safe_load(PRODUCTION_CONFIG.read_text())["state"]["table"]


def _role_policy(renderer: Renderer, role: str) -> dict[str, Any]:
    (policy,) = renderer.resource(role)["Properties"]["Policies"]
    document = policy["PolicyDocument"]
    assert isinstance(document, dict)
    return document


def test_stack_execution_role_grants_exactly_the_reviewed_execution_policy() -> None:
    document = _role_policy(render(), "ExecutionRole")
    assert policy_problems(document) == []
    assert grants(document) == grants(json.loads(EXECUTION_ROLE_POLICY.read_text()))


def test_stack_task_role_grants_the_reviewed_task_policy_with_pipelines_by_prefix() -> None:
    document = _role_policy(render(), "TaskRole")
    assert policy_problems(document) == []
    reviewed = grants(json.loads(TASK_ROLE_POLICY.read_text()))
    stack = grants(document)
    assert {g for g in stack if not g[0].startswith("codepipeline:")} == \
        {g for g in reviewed if not g[0].startswith("codepipeline:")}
    (pattern,) = {r for a, r in stack if a.startswith("codepipeline:")}
    assert {a for a, _ in stack if a.startswith("codepipeline:")} == \
        {a for a, _ in reviewed if a.startswith("codepipeline:")}
    assert pattern == f"arn:aws:codepipeline:{REGION}:{ACCOUNT}:acme-*"
    for _, pipeline in (g for g in reviewed if g[0].startswith("codepipeline:")):
        assert fnmatch.fnmatchcase(pipeline, pattern), pipeline


def test_pipeline_prefix_limits_what_the_task_role_may_start() -> None:
    document = _role_policy(render({"PipelineNamePrefix": "team-a-"}), "TaskRole")
    (pattern,) = {r for a, r in grants(document) if a.startswith("codepipeline:")}
    assert not fnmatch.fnmatchcase(
        f"arn:aws:codepipeline:{REGION}:{ACCOUNT}:acme-collections-deploy", pattern)


def test_the_task_role_may_publish_to_the_stacks_notification_topic_only() -> None:
    r = render()
    topic = r.resource("NotificationTopic")["Properties"]
    arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:{topic['TopicName']}"
    published = {res for action, res in grants(_role_policy(r, "TaskRole"))
                 if action.startswith("sns:")}
    assert published == {arn}
    assert {a for a, _ in grants(_role_policy(r, "TaskRole")) if a.startswith("sns:")} == \
        {"sns:Publish"}
    assert topic["KmsMasterKeyId"] == "alias/aws/sns"


@pytest.mark.parametrize(("email", "subscribed"), [("", False), ("ops@example.com", True)])
def test_the_notification_topic_mails_an_address_only_when_one_is_given(
        email: str, subscribed: bool) -> None:
    r = render({"NotificationEmail": email})
    assert r.exists("NotificationEmailSubscription") is subscribed
    if subscribed:
        props = r.resource("NotificationEmailSubscription")["Properties"]
        assert (props["Protocol"], props["Endpoint"]) == ("email", email)
        assert props["TopicArn"] == r.ref("NotificationTopic")


# --- network, health check, alarms -----------------------------------------------------


def test_only_https_reaches_the_load_balancer_and_only_the_load_balancer_reaches_the_tasks() \
        -> None:
    r = render()
    alb = r.resource("LoadBalancerSecurityGroup")["Properties"]
    assert [(i["FromPort"], i["ToPort"]) for i in alb["SecurityGroupIngress"]] == [(443, 443)]
    tasks = r.resource("TaskSecurityGroup")["Properties"]
    assert "SecurityGroupIngress" not in tasks
    ingress = r.resource("TaskIngressFromLoadBalancer")["Properties"]
    assert (ingress["FromPort"], ingress["ToPort"], ingress["SourceSecurityGroupId"]) == \
        (8080, 8080, "LoadBalancerSecurityGroup-id")
    listener = r.resource("HttpsListener")["Properties"]
    assert (listener["Protocol"], listener["Port"]) == ("HTTPS", 443)
    assert listener["Certificates"] == [{"CertificateArn": production_parameters()
                                         ["CertificateArn"]}]


def test_target_group_checks_healthz_on_the_container_port() -> None:
    r = render()
    group = r.resource("TargetGroup")["Properties"]
    container = stack_task_definition()["containerDefinitions"][0]
    assert group["HealthCheckPath"] == "/healthz"
    assert group["Port"] == container["portMappings"][0]["containerPort"]
    (binding,) = r.resource("Service")["Properties"]["LoadBalancers"]
    assert (binding["ContainerName"], binding["ContainerPort"]) == \
        (container["name"], group["Port"])


def _alarm_metric_names(alarm: dict[str, Any]) -> set[str]:
    props = alarm["Properties"]
    names = {props["MetricName"]} if "MetricName" in props else set()
    for query in props.get("Metrics", []):
        names |= set(re.findall(r"SELECT \w+\((\w+)\)", query.get("Expression", "")))
    return names


def test_every_service_alarm_watches_a_metric_the_service_emits() -> None:
    r = render()
    emitted = {name for table in metrics._METRICS.values() for name, *_ in table}
    alarms = {n: r.resource(n) for n, res in r.doc["Resources"].items()
              if res["Type"] == "AWS::CloudWatch::Alarm"}
    ours = {n: a for n, a in alarms.items()
            if a["Properties"].get("Namespace") != "AWS/ApplicationELB"}
    watched = set().union(*(_alarm_metric_names(a) for a in ours.values()))
    assert watched  # the regex found the Metrics Insights queries
    assert watched <= emitted
    assert {"PipelineStartFailures", "Deliveries", "DeliveriesFailed",
            "OldestPendingSeconds"} <= watched


def test_alarms_notify_the_topic_only_when_one_is_given() -> None:
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:ops"
    without, with_topic = render(), render({"AlarmTopicArn": topic})
    for name, res in without.doc["Resources"].items():
        if res["Type"] == "AWS::CloudWatch::Alarm":
            assert "AlarmActions" not in without.resource(name)["Properties"]
            assert with_topic.resource(name)["Properties"]["AlarmActions"] == [topic]


def test_renderer_resolves_everything_it_is_given() -> None:
    # a template function the renderer does not know must fail loudly, not pass through
    doc = copy.deepcopy(load_stack())
    doc["Resources"]["LogGroup"]["Properties"]["RetentionInDays"] = {"Fn::Select": [0, [1]]}
    with pytest.raises(AssertionError, match="Fn::Select"):
        Renderer(doc, production_parameters()).resource("LogGroup")


# --- the load balancer's access logs ---------------------------------------------------


def _attributes(renderer: Renderer) -> dict[str, str]:
    attributes = renderer.resource("LoadBalancer")["Properties"]["LoadBalancerAttributes"]
    return {a["Key"]: a["Value"] for a in attributes}


def _delivery_statement(renderer: Renderer) -> dict[str, Any]:
    document = renderer.resource("AccessLogsBucketPolicy")["Properties"]["PolicyDocument"]
    (statement,) = [s for s in document["Statement"]
                    if s["Effect"] == "Allow" and s["Action"] == "s3:PutObject"]
    assert isinstance(statement, dict)
    return statement


def test_load_balancer_logs_where_the_bucket_policy_lets_elastic_load_balancing_write() -> None:
    r = render()
    attributes = _attributes(r)
    assert attributes["access_logs.s3.enabled"] == "true"
    bucket = r.resource("AccessLogsBucketPolicy")["Properties"]["Bucket"]
    assert attributes["access_logs.s3.bucket"] == bucket == r.ref("AccessLogsBucket")
    prefix = attributes["access_logs.s3.prefix"]
    assert "AWSLogs" not in prefix  # the user guide: Elastic Load Balancing adds it
    # where the guide says the objects go: bucket/prefix/AWSLogs/ACCOUNT/...
    assert _delivery_statement(r)["Resource"] == \
        f"arn:aws:s3:::{bucket}/{prefix}/AWSLogs/{ACCOUNT}/*"
    # enabling the logs writes a test object at once
    assert r.doc["Resources"]["LoadBalancer"]["DependsOn"] == "AccessLogsBucketPolicy"


# the writer per Region, from the table of the Elastic Load Balancing user guide ("Enable
# access logs for your Application Load Balancer"): an account where the guide lists one, the
# log delivery service elsewhere ("such as Middle East (UAE)")
@pytest.mark.parametrize(("region", "partition", "principal"), [
    ("us-east-1", "aws", {"AWS": "arn:aws:iam::127311923021:root"}),
    ("eu-west-1", "aws", {"AWS": "arn:aws:iam::156460612806:root"}),
    ("us-gov-west-1", "aws-us-gov", {"AWS": "arn:aws-us-gov:iam::048591011584:root"}),
    ("me-central-1", "aws", {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}),
])
def test_bucket_policy_lets_the_regions_log_writer_deliver(
        region: str, partition: str, principal: dict[str, str]) -> None:
    r = render({"AWS::Region": region, "AWS::Partition": partition})
    assert _delivery_statement(r)["Principal"] == principal


def test_a_region_the_mapping_lacks_fails_instead_of_guessing_the_writer() -> None:
    with pytest.raises(KeyError, match="xx-nowhere-1"):
        render({"AWS::Region": "xx-nowhere-1"}).resource("AccessLogsBucketPolicy")


def test_access_log_bucket_is_private_encrypted_tls_only_and_expires_its_logs() -> None:
    r = render()
    bucket = r.resource("AccessLogsBucket")
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    # the only encryption Elastic Load Balancing delivers to
    (encryption,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption == {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    (rule,) = props["LifecycleConfiguration"]["Rules"]
    assert (rule["Status"], rule["ExpirationInDays"]) == ("Enabled", 90)
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0
    document = r.resource("AccessLogsBucketPolicy")["Properties"]["PolicyDocument"]
    (deny,) = [s for s in document["Statement"] if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(deny["Resource"]) == {r.attribute("AccessLogsBucket", "Arn"),
                                     r.attribute("AccessLogsBucket", "Arn") + "/*"}


# --- the customer managed key -----------------------------------------------------------

KEY = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"  # KMS docs' example key


@pytest.mark.parametrize(("value", "accepted"), [
    ("", True),
    (KEY, True),
    (f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/webhook-receiver", False),  # CloudWatch Logs takes key ARNs only
    ("1234abcd-12ab-34cd-56ef-1234567890ab", False),  # a key id alone
])
def test_key_parameter_takes_a_key_arn_or_nothing(value: str, accepted: bool) -> None:
    for template in (load_stack(), load_stack(TABLE_SNIPPET.read_text())):
        pattern = template["Parameters"]["KmsKeyArn"]["AllowedPattern"]
        assert (re.fullmatch(pattern, value) is not None) is accepted


def test_without_a_key_the_log_group_and_table_use_aws_managed_keys() -> None:
    r = render()
    assert "KmsKeyId" not in r.resource("LogGroup")["Properties"]
    assert r.resource("StateTable")["Properties"]["SSESpecification"] == \
        {"SSEEnabled": True, "SSEType": "KMS"}  # the aws/dynamodb key
    assert not r.exists("StateTableKeyPolicy")


def test_with_a_key_the_log_group_and_table_use_it_and_the_task_role_may_through_dynamodb() \
        -> None:
    r = render({"KmsKeyArn": KEY})
    assert r.resource("LogGroup")["Properties"]["KmsKeyId"] == KEY
    assert r.resource("StateTable")["Properties"]["SSESpecification"] == \
        {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": KEY}
    assert r.exists("StateTableKeyPolicy")
    policy = r.resource("StateTableKeyPolicy")["Properties"]
    assert policy["RoleName"] == r.ref("TaskRole")
    document = policy["PolicyDocument"]
    assert policy_problems(document) == []
    assert {resource for _, resource in grants(document)} == {KEY}
    assert {action for action, _ in grants(document)} >= {"kms:Decrypt", "kms:Encrypt"}
    (statement,) = document["Statement"]
    assert statement["Condition"] == \
        {"StringEquals": {"kms:ViaService": f"dynamodb.{REGION}.amazonaws.com"}}


@pytest.mark.parametrize("key", ["", KEY], ids=["no key", "a key"])
def test_table_snippet_encrypts_the_table_as_the_stack_does(key: str) -> None:
    snippet = Renderer(load_stack(TABLE_SNIPPET.read_text()), {"KmsKeyArn": key})
    assert snippet.resource("StateTable")["Properties"]["SSESpecification"] == \
        render({"KmsKeyArn": key}).resource("StateTable")["Properties"]["SSESpecification"]


# --- secrets ---------------------------------------------------------------------------


def _injected(renderer: Renderer) -> dict[str, str]:
    container = renderer.resource("TaskDefinition")["Properties"]["ContainerDefinitions"][0]
    return {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}


def test_stack_execution_role_reads_exactly_the_secrets_its_task_definition_injects() -> None:
    r = render()
    granted = {g for g in grants(_role_policy(r, "ExecutionRole"))
               if g[0].startswith("secretsmanager:")}
    assert granted == {("secretsmanager:GetSecretValue", arn) for arn in _injected(r).values()}


def test_connection_sends_the_secret_the_service_verifies_events_with() -> None:
    # outcomes.api_keys of the baked-in config names env:NAME; the task injects NAME from a
    # secret, and the connection must resolve that very secret
    r = render()
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    (reference,) = config["outcomes"]["api_keys"]
    assert reference.startswith("env:")
    secret = _injected(r)[reference.removeprefix("env:")]
    auth = r.resource("OutcomesConnection")["Properties"]["AuthParameters"]
    assert auth["ApiKeyAuthParameters"]["ApiKeyValue"] == f"{{{{resolve:secretsmanager:{secret}}}}}"


# --- the status page's sign-in -----------------------------------------------------------


UI_CLIENT_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:ui-oidc-client-AbCdEf"
UI_OIDC = {"UiOidcIssuer": "https://idp.example.com",
           "UiOidcAuthorizationEndpoint": "https://idp.example.com/oauth2/authorize",
           "UiOidcTokenEndpoint": "https://idp.example.com/oauth2/token",
           "UiOidcUserInfoEndpoint": "https://idp.example.com/oauth2/userinfo",
           "UiOidcClientId": "webhook-receiver-status",
           "UiOidcClientSecretArn": UI_CLIENT_SECRET}


def test_without_an_issuer_there_is_no_sign_in_rule_and_no_way_out_to_an_idp() -> None:
    r = render()
    assert not r.exists("UiSignInRule")
    assert not r.exists("LoadBalancerEgressToIdp")
    assert r.resource("HttpsListener")["Properties"]["DefaultActions"] == [
        {"Type": "forward", "TargetGroupArn": "TargetGroup-id"}]


def test_the_sign_in_rule_authenticates_the_status_page_only_then_forwards() -> None:
    r = render(UI_OIDC)
    assert r.exists("UiSignInRule") and r.exists("LoadBalancerEgressToIdp")
    rule = r.resource("UiSignInRule")["Properties"]
    assert rule["ListenerArn"] == "HttpsListener-id"
    # /ui/* only: webhooks and execution events keep the default action, with no sign-in
    assert rule["Conditions"] == [{"Field": "path-pattern",
                                   "PathPatternConfig": {"Values": ["/ui", "/ui/*"]}}]
    authenticate, forward = sorted(rule["Actions"], key=lambda a: a["Order"])
    assert authenticate["Type"] == "authenticate-oidc"
    config = authenticate["AuthenticateOidcConfig"]
    assert {k: config[k] for k in ("Issuer", "AuthorizationEndpoint", "TokenEndpoint",
                                   "UserInfoEndpoint", "ClientId")} == {
        "Issuer": UI_OIDC["UiOidcIssuer"],
        "AuthorizationEndpoint": UI_OIDC["UiOidcAuthorizationEndpoint"],
        "TokenEndpoint": UI_OIDC["UiOidcTokenEndpoint"],
        "UserInfoEndpoint": UI_OIDC["UiOidcUserInfoEndpoint"],
        "ClientId": UI_OIDC["UiOidcClientId"]}
    # the client secret never in a parameter value: resolved from Secrets Manager
    assert config["ClientSecret"] == f"{{{{resolve:secretsmanager:{UI_CLIENT_SECRET}}}}}"
    assert config["OnUnauthenticatedRequest"] == "authenticate"
    assert forward == {"Type": "forward", "Order": 2, "TargetGroupArn": "TargetGroup-id"}
    egress = r.resource("LoadBalancerEgressToIdp")["Properties"]
    assert (egress["GroupId"], egress["FromPort"], egress["ToPort"]) == \
        ("LoadBalancerSecurityGroup-id", 443, 443)


def test_the_stack_names_the_load_balancer_the_service_checks_the_signer_against() -> None:
    # ui.alb_arn is the ARN of this load balancer (Ref of an ELBv2 load balancer is its ARN)
    outputs = load_stack()["Outputs"]
    assert outputs["LoadBalancerArn"]["Value"] == {"Ref": "LoadBalancer"}


@pytest.mark.parametrize(("parameter", "value", "accepted"), [
    ("UiOidcIssuer", "", True),
    ("UiOidcIssuer", "https://idp.example.com", True),
    ("UiOidcIssuer", "http://idp.example.com", False),
    ("UiOidcTokenEndpoint", "https://idp.example.com/token", True),
    ("UiOidcClientSecretArn", UI_CLIENT_SECRET, True),
    ("UiOidcClientSecretArn", "my-client-secret", False),  # a secret's value, not its ARN
])
def test_sign_in_parameters_take_https_endpoints_and_a_secret_arn(
        parameter: str, value: str, accepted: bool) -> None:
    pattern = load_stack()["Parameters"][parameter]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is accepted


# --- execution outcomes: the snippet, the rule, the API destination ---------------------


def _outcome_differences(stack: dict[str, Any], snippet: dict[str, Any]) -> list[str]:
    """The outcome resources (and the parameters they use) that differ between the two."""
    s, o = render(doc=stack), render(doc=snippet)
    differ = [n for n in OUTCOME_RESOURCES if s.resource(n) != o.resource(n)]
    shape = ("Type", "AllowedPattern")
    return differ + [p for p in snippet["Parameters"]
                     if {k: stack["Parameters"][p].get(k) for k in shape}
                     != {k: snippet["Parameters"][p].get(k) for k in shape}]


def test_snippet_and_stack_define_the_same_outcome_resources() -> None:
    snippet = load_stack(OUTCOMES_SNIPPET.read_text())
    assert set(snippet["Resources"]) == set(OUTCOME_RESOURCES)
    assert _outcome_differences(load_stack(), snippet) == []


def _header(doc: dict[str, Any]) -> None:
    doc["Resources"]["OutcomesConnection"]["Properties"]["AuthParameters"][
        "ApiKeyAuthParameters"]["ApiKeyName"] = "x-events-key"


def _path(doc: dict[str, Any]) -> None:
    doc["Resources"]["OutcomesDestination"]["Properties"]["InvocationEndpoint"] = {
        "Fn::Sub": "https://${ServiceHostName}/events/pipeline"}


def _detail_type(doc: dict[str, Any]) -> None:
    doc["Resources"]["OutcomesRule"]["Properties"]["EventPattern"]["detail-type"] = [
        "CodePipeline Stage Execution State Change"]


def _prefix_pattern(doc: dict[str, Any]) -> None:
    doc["Parameters"]["PipelineNamePrefix"]["AllowedPattern"] = ".*"


@pytest.mark.parametrize(("mutate", "differs"), [
    pytest.param(_header, "OutcomesConnection", id="another header name"),
    pytest.param(_path, "OutcomesDestination", id="another endpoint path"),
    pytest.param(_detail_type, "OutcomesRule", id="another detail-type"),
    pytest.param(_prefix_pattern, "PipelineNamePrefix", id="a looser parameter pattern"),
])
def test_outcome_comparison_catches_a_snippet_that_drifted(
        mutate: Callable[[dict[str, Any]], None], differs: str) -> None:
    snippet = load_stack(OUTCOMES_SNIPPET.read_text())
    mutate(snippet)
    assert _outcome_differences(load_stack(), snippet) == [differs]


def pipeline_event(pipeline: str, **changes: Any) -> dict[str, Any]:
    """A pipeline-execution event in the shape the CodePipeline user guide ("Monitoring
    CodePipeline events") shows, for ``pipeline``; ``changes`` replace top-level fields."""
    return {
        "version": "0", "id": "01234567-0123-0123-0123-012345678901",
        "detail-type": "CodePipeline Pipeline Execution State Change",
        "source": "aws.codepipeline", "account": ACCOUNT, "time": "2026-12-01T10:00:00Z",
        "region": REGION, "resources": [f"arn:aws:codepipeline:{REGION}:{ACCOUNT}:{pipeline}"],
        "detail": {"pipeline": pipeline, "execution-id": "12345678-1234-5678-abcd-12345678abcd",
                   "state": "SUCCEEDED", "version": 1, "pipeline-execution-attempt": 1},
        **changes}


def _rule_matches(event: dict[str, Any]) -> bool:
    # moto's implementation of EventBridge's pattern matching (TestEventPattern is not one
    # of the calls moto serves)
    pattern = render().resource("OutcomesRule")["Properties"]["EventPattern"]
    return bool(EventPattern.load(json.dumps(pattern)).matches_event(event))


def _configured_pipelines() -> list[str]:
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    return [p["name"] for repo in config["repositories"] for p in repo["pipelines"]]


@pytest.mark.parametrize("pipeline", _configured_pipelines())
def test_rule_forwards_each_configured_pipelines_events_which_the_service_parses(
        pipeline: str) -> None:
    event = pipeline_event(pipeline)
    assert _rule_matches(event)
    assert outcomes.parse_event(event).pipeline == pipeline


def test_rule_pattern_is_the_source_and_detail_type_the_service_accepts() -> None:
    pattern = render().resource("OutcomesRule")["Properties"]["EventPattern"]
    assert pattern["detail-type"] == [outcomes.DETAIL_TYPE]
    (source,) = pattern["source"]
    # parse_event raises Ignored for any other source
    event = pipeline_event("acme-collections-deploy", source=source)
    assert outcomes.parse_event(event).status == "Succeeded"


@pytest.mark.parametrize("event", [
    pipeline_event("acme-collections-deploy", source="aws.codebuild"),
    pipeline_event("acme-collections-deploy",
                   **{"detail-type": "CodePipeline Stage Execution State Change"}),
    pipeline_event("team-b-deploy"),
], ids=["another source", "another detail-type", "a pipeline outside the prefix"])
def test_rule_does_not_forward_other_events(event: dict[str, Any]) -> None:
    assert not _rule_matches(event)


def test_service_authenticates_and_parses_the_request_the_api_destination_makes(
        tmp_path: Path) -> None:
    r = render()
    destination = r.resource("OutcomesDestination")["Properties"]
    header = r.resource("OutcomesConnection")["Properties"]["AuthParameters"][
        "ApiKeyAuthParameters"]["ApiKeyName"]
    endpoint = urlsplit(destination["InvocationEndpoint"])
    assert (endpoint.scheme, endpoint.netloc) == ("https", "webhooks.example.com")
    # the production config with local state and no AWS calls; its outcomes section as is
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text()) | {
        "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        "launcher": {"backend": "log"}}
    key = "events-api-key-from-the-secret"
    env = {name: f"test-value-of-{name.lower()}" for name in SECRET_PARAMETERS} | {
        "EVENTS_API_KEY": key}
    svc = Service(config, tmp_path, env=env, workers=1).start()
    try:
        body = json.dumps(pipeline_event("acme-collections-deploy")).encode()
        # the headers EventBridge sends to an API destination, and the connection's key
        sent = {"Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Amazon/EventBridge/ApiDestinations"}
        answer = requests.request(destination["HttpMethod"], svc.url + endpoint.path,
                                  data=body, headers=sent | {header: key}, timeout=10)
        assert answer.status_code == 200, answer.text
        # authenticated and parsed; only the execution is not one this service started
        assert answer.json() == {"status": "ignored",
                                 "reason": "an execution this service did not start"}
        wrong_header = requests.request(destination["HttpMethod"], svc.url + endpoint.path,
                                        data=body, headers=sent | {"x-api-token": key},
                                        timeout=10)
        assert wrong_header.status_code == 401
    finally:
        svc.stop()


# --- docs ------------------------------------------------------------------------------


def test_every_stack_parameter_is_in_the_deploy_docs_table() -> None:
    rows = [line for line in DEPLOY_DOC.read_text().splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert set(load_stack()["Parameters"]) <= documented
