"""ecs-task.json and the IAM policies, validated offline.

The task definition is checked against botocore's own ECS service model (the request shape of
RegisterTaskDefinition: field names, types, required members, enums), then against what that
model cannot express: Fargate's cpu/memory table, the health-check ranges, the secrets the
production config needs, the image's user and port, and the stop timeout against gunicorn's
graceful timeout. Every check is shown to fail on a deliberately broken copy.

The IAM policies are checked for shape and wildcards, and for least privilege against what
the code really calls: the DynamoDB operations the store issues, the pipelines the production
config names, the secrets and log group the task definition uses.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name
from botocore.validate import ParamValidator

from receiver import gunicorn_conf
from receiver.state import dynamodb
from tests.test_container import exposed_ports, image_user, load_dockerfile, volumes

ROOT = Path(__file__).resolve().parent.parent
TASK_FILE = ROOT / "ecs-task.json"
PRODUCTION_CONFIG = ROOT / "config" / "production.yaml"
TASK_ROLE_POLICY = ROOT / "config" / "iam-task-role-policy.json"
STATE_INIT_POLICY = ROOT / "config" / "iam-state-init-policy.json"
EXECUTION_ROLE_POLICY = ROOT / "config" / "iam-execution-role-policy.json"

_SESSION = botocore.session.get_session()

# Fargate's valid task sizes: cpu units -> memory MiB. AWS's table, from "Task CPU and memory"
# in the ECS developer guide (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/
# fargate-tasks-services.html#fargate-tasks-size) and the `memory` member of
# RegisterTaskDefinition in the API reference. 8 and 16 vCPU need Linux platform 1.4.0.
FARGATE_SIZES: dict[int, frozenset[int]] = {
    256: frozenset({512, 1024, 2048}),
    512: frozenset(range(1024, 4096 + 1, 1024)),
    1024: frozenset(range(2048, 8192 + 1, 1024)),
    2048: frozenset(range(4096, 16384 + 1, 1024)),
    4096: frozenset(range(8192, 30720 + 1, 1024)),
    8192: frozenset(range(16384, 61440 + 1, 4096)),
    16384: frozenset(range(32768, 122880 + 1, 8192)),
}
# HealthCheck in the ECS API reference (https://docs.aws.amazon.com/AmazonECS/latest/APIReference/
# API_HealthCheck.html), the same text as botocore's model documentation for the shape.
HEALTH_CHECK_RANGES = {"interval": (5, 300), "timeout": (2, 60), "retries": (1, 10),
                       "startPeriod": (0, 300)}
# ContainerDefinition.stopTimeout: "For tasks that use the Fargate launch type, the max stop
# timeout value is 120 seconds".
FARGATE_MAX_STOP_TIMEOUT = 120
# after graceful_timeout gunicorn's master still has to reap its workers and exit; a SIGKILL
# at the very same second would cut that short
STOP_MARGIN_SECONDS = 5
# LinuxParameters members Fargate refuses (ECS developer guide, "Task definition parameters
# for Amazon ECS Fargate": tmpfs, sharedMemorySize and devices are not supported)
FARGATE_UNSUPPORTED_LINUX_PARAMETERS = ("tmpfs", "sharedMemorySize", "devices")
SECRETS_MANAGER_ARN = re.compile(
    r"^arn:aws[\w-]*:secretsmanager:(?P<region>[\w-]+):(?P<account>\d{12}):secret:"
    r"(?P<name>[\w/+=.@-]+)-[A-Za-z0-9]{6}$")


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def env_references(node: Any) -> set[str]:
    """Every NAME of an ``env:NAME`` secret reference anywhere in a config document."""
    if isinstance(node, str):
        return {node[4:]} if node.startswith("env:") else set()
    if isinstance(node, dict):
        return set().union(*(env_references(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_references(v) for v in node)) if node else set()
    return set()


def service_container(task: dict[str, Any]) -> dict[str, Any] | None:
    """The container definition that runs the image (named like the family)."""
    return next((c for c in task.get("containerDefinitions", [])
                 if isinstance(c, dict) and c.get("name") == task.get("family")), None)


def botocore_problems(task: dict[str, Any]) -> list[str]:
    """What botocore's ECS model says about the request (empty when it is valid)."""
    shape = _SESSION.get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(task, shape)
    return [f"botocore: {line}" for line in report.generate_report().splitlines() if line] \
        if report.has_errors() else []


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def task_problems(task: dict[str, Any]) -> list[str]:
    """Everything wrong with ``task`` for this service on Fargate (empty when fine)."""
    problems = botocore_problems(task)
    if "FARGATE" not in task.get("requiresCompatibilities", []):
        problems.append("requiresCompatibilities must include FARGATE")
    if task.get("networkMode") != "awsvpc":
        problems.append("networkMode must be awsvpc (the only mode Fargate has)")
    cpu, memory = _int(task.get("cpu")), _int(task.get("memory"))
    if cpu is None or memory is None or memory not in FARGATE_SIZES.get(cpu, frozenset()):
        problems.append(f"cpu {task.get('cpu')!r} / memory {task.get('memory')!r} is not a "
                        "Fargate task size (give both in units/MiB from AWS's table)")

    container = service_container(task)
    if container is None:
        return [*problems, "no container definition named like the family"]
    final = load_dockerfile().final

    if container.get("readonlyRootFilesystem") is not True:
        problems.append("readonlyRootFilesystem must be true")
    user = str(container.get("user", ""))
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        problems.append(f"user {user!r} must be numeric uid[:gid] (no passwd lookup, no root)")
    elif int(uid) == 0 or (gid and int(gid) == 0):
        problems.append(f"user {user!r} is root")
    elif (int(uid), int(gid or uid)) != image_user(final):
        problems.append(f"user {user!r} is not the Dockerfile USER {image_user(final)}: the "
                        "image's file ownership assumes that user")

    ports = exposed_ports(final)
    mappings = container.get("portMappings", [])
    if [m.get("containerPort") for m in mappings] != sorted(ports):
        problems.append(f"portMappings {[m.get('containerPort') for m in mappings]} do not "
                        f"match the Dockerfile EXPOSE {sorted(ports)}")
    for m in mappings:
        if m.get("hostPort", m.get("containerPort")) != m.get("containerPort"):
            problems.append("with awsvpc a hostPort must equal its containerPort")

    check = container.get("healthCheck")
    if not isinstance(check, dict):
        problems.append("no container healthCheck")
    else:
        command = check.get("command", [])
        if not command or command[0] not in ("CMD", "CMD-SHELL"):
            problems.append("healthCheck command must start with CMD or CMD-SHELL")
        if not any("/healthz" in str(part) for part in command):
            problems.append("healthCheck must probe /healthz, which touches no dependency: a "
                            "DynamoDB outage must not get every task replaced")
        for name, (low, high) in HEALTH_CHECK_RANGES.items():
            value = check.get(name)
            if not isinstance(value, int) or not low <= value <= high:
                problems.append(f"healthCheck {name} {value!r} is not within {low}-{high}")

    stop = container.get("stopTimeout")
    graceful = gunicorn_conf.graceful_timeout
    if not isinstance(stop, int) or not (
            graceful + STOP_MARGIN_SECONDS <= stop <= FARGATE_MAX_STOP_TIMEOUT):
        problems.append(f"stopTimeout {stop!r} must be at least gunicorn's graceful_timeout "
                        f"{graceful} + {STOP_MARGIN_SECONDS} s and at most "
                        f"{FARGATE_MAX_STOP_TIMEOUT} (Fargate's limit)")

    logging = container.get("logConfiguration", {})
    options = logging.get("options", {})
    if logging.get("logDriver") != "awslogs":
        problems.append("logConfiguration logDriver must be awslogs")
    for option in ("awslogs-group", "awslogs-region", "awslogs-stream-prefix"):
        if not options.get(option):
            problems.append(f"awslogs option {option} missing (stream prefix: Fargate needs it)")

    secrets = {s.get("name"): s.get("valueFrom") for s in container.get("secrets", [])}
    plain = {e.get("name") for e in container.get("environment", [])}
    for name in sorted(env_references(yaml.safe_load(PRODUCTION_CONFIG.read_text()))):
        if name not in secrets:
            problems.append(f"config/production.yaml needs env:{name}, which no `secrets` "
                            "entry injects")
        elif not SECRETS_MANAGER_ARN.match(str(secrets[name])):
            problems.append(f"secret {name}: valueFrom {secrets[name]!r} is not a full "
                            "Secrets Manager secret ARN")
        if name in plain:
            problems.append(f"{name} is also a plain-text `environment` entry")

    mounts = {m.get("containerPath"): m for m in container.get("mountPoints", [])}
    task_volumes = {v.get("name"): v for v in task.get("volumes", [])}
    tmp = mounts.get("/tmp")
    if tmp is None or tmp.get("readOnly"):
        problems.append("no writable mount at /tmp: with a read-only root filesystem the "
                        "task's scratch volume is the only writable disk")
    elif "/tmp" not in volumes(final):
        problems.append("the Dockerfile does not declare VOLUME /tmp, so Fargate would mount "
                        "/tmp as root 0755")
    for path, mount in mounts.items():
        volume = task_volumes.get(mount.get("sourceVolume"))
        if volume is None:
            problems.append(f"mount {path} names no task volume")
        elif set(volume) - {"name"}:
            problems.append(f"volume {volume.get('name')!r} is not a Fargate task-storage bind "
                            "mount (no host path, docker volume or EFS here)")
    linux = container.get("linuxParameters", {})
    for name in FARGATE_UNSUPPORTED_LINUX_PARAMETERS:
        if name in linux:
            problems.append(f"linuxParameters.{name} is not supported on Fargate")
    return problems


def test_task_definition_passes_every_check() -> None:
    assert task_problems(_load(TASK_FILE)) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path; ``c`` is the service container, numbers index lists."""
    def mutate(task: dict[str, Any]) -> None:
        keys = path.split(".")
        node: Any = service_container(task) if keys[0] == "c" else task
        keys = keys[1:] if keys[0] == "c" else keys
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(task: dict[str, Any]) -> None:
        keys = path.split(".")
        node: Any = service_container(task) if keys[0] == "c" else task
        keys = keys[1:] if keys[0] == "c" else keys
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[keys[-1]]
    return mutate


def _without_secret(name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(task: dict[str, Any]) -> None:
        container = service_container(task)
        assert container is not None
        before = len(container["secrets"])
        container["secrets"] = [s for s in container["secrets"] if s["name"] != name]
        assert len(container["secrets"]) == before - 1
    return mutate


def _secret_also_in_environment(task: dict[str, Any]) -> None:
    container = service_container(task)
    assert container is not None
    container["environment"].append({"name": "GITHUB_TOKEN", "value": "ghp_plaintext"})


@pytest.mark.parametrize(("mutate", "caught_as"), [
    pytest.param(_set("memory", "8192"), "not a Fargate task size", id="cpu-memory pair not in the Fargate table"),
    pytest.param(_set("memory", "1536"), "not a Fargate task size", id="memory between the steps of its cpu row"),
    pytest.param(_set("cpu", 512), "botocore: Invalid type for parameter cpu", id="cpu as a number instead of a string"),
    pytest.param(_set("networkMode", "bridge"), "networkMode must be awsvpc", id="bridge networking"),
    pytest.param(_set("requiresCompatibilities", ["EC2"]), "FARGATE", id="EC2 only"),
    pytest.param(_without_secret("GITHUB_TOKEN"), "needs env:GITHUB_TOKEN", id="a secret the config references is missing"),
    pytest.param(_without_secret("EVENTS_API_KEY"), "needs env:EVENTS_API_KEY", id="the events API key of outcomes.api_keys is missing"),
    pytest.param(_delete("c.secrets.0.valueFrom"), "botocore: Missing required parameter", id="a secret without valueFrom"),
    pytest.param(_set("c.secrets.0.valueFrom", "arn:aws:ssm:us-east-1:123456789012:parameter/x"), "not a full Secrets Manager secret ARN", id="a secret from SSM instead of Secrets Manager"),
    pytest.param(_secret_also_in_environment, "plain-text", id="a secret also given in plain text"),
    pytest.param(_set("c.user", "0"), "is root", id="root user by uid"),
    pytest.param(_set("c.user", "0:0"), "is root", id="root user and group"),
    pytest.param(_set("c.user", "root"), "must be numeric", id="root user by name"),
    pytest.param(_delete("c.user"), "must be numeric", id="no user"),
    pytest.param(_set("c.user", "10002:10002"), "is not the Dockerfile USER", id="a user the image does not define"),
    pytest.param(_set("c.readonlyRootFilesystem", False), "readonlyRootFilesystem", id="writable root filesystem"),
    pytest.param(_set("c.portMappings.0.containerPort", 8081), "do not match the Dockerfile EXPOSE", id="container port differs from EXPOSE"),
    pytest.param(_set("c.portMappings.0.hostPort", 80), "hostPort must equal", id="host port differs from container port"),
    pytest.param(_delete("c.healthCheck"), "no container healthCheck", id="no health check"),
    pytest.param(_set("c.healthCheck.command", ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz')"]), "must probe /healthz", id="health check on readyz"),
    pytest.param(_set("c.healthCheck.interval", 4), "interval 4", id="health check interval below 5"),
    pytest.param(_set("c.healthCheck.timeout", 61), "timeout 61", id="health check timeout above 60"),
    pytest.param(_set("c.healthCheck.retries", 0), "retries 0", id="health check retries 0"),
    pytest.param(_set("c.healthCheck.startPeriod", 301), "startPeriod 301", id="health check start period above 300"),
    pytest.param(_set("c.stopTimeout", gunicorn_conf.graceful_timeout), "stopTimeout", id="stop timeout equal to gunicorn graceful timeout"),
    pytest.param(_set("c.stopTimeout", 121), "stopTimeout", id="stop timeout above Fargate's 120"),
    pytest.param(_delete("c.stopTimeout"), "stopTimeout", id="no stop timeout"),
    pytest.param(_set("c.stopTimeout", "45"), "botocore: Invalid type for parameter containerDefinitions[0].stopTimeout", id="stop timeout as a string"),
    pytest.param(_set("c.stopTimeOut", 45), "botocore: Unknown parameter in containerDefinitions[0]", id="a misspelt field"),
    pytest.param(_set("c.logConfiguration.logDriver", "json-file"), "awslogs", id="logs not shipped to CloudWatch"),
    pytest.param(_delete("c.logConfiguration.options.awslogs-stream-prefix"), "awslogs-stream-prefix", id="no awslogs stream prefix"),
    pytest.param(_set("c.mountPoints.0.readOnly", True), "no writable mount at /tmp", id="tmp volume mounted read-only"),
    pytest.param(_set("c.mountPoints.0.containerPath", "/scratch"), "no writable mount at /tmp", id="scratch volume not at tmp"),
    pytest.param(_set("volumes.0.host", {"sourcePath": "/var/tmp"}), "not a Fargate task-storage bind mount", id="a host path volume"),
    pytest.param(_set("c.linuxParameters.tmpfs", [{"containerPath": "/tmp", "size": 64}]), "tmpfs is not supported", id="tmpfs on Fargate"),
])
def test_task_check_catches_a_broken_copy(mutate: Callable[[dict[str, Any]], None],
                                          caught_as: str) -> None:
    task = copy.deepcopy(_load(TASK_FILE))
    mutate(task)
    problems = task_problems(task)
    assert any(caught_as in p for p in problems), problems


def _documented_fargate_sizes() -> dict[int, frozenset[int]]:
    """The cpu/memory table as botocore's model documents RegisterTaskDefinition.memory."""
    doc = _SESSION.get_service_model("ecs").operation_model(
        "RegisterTaskDefinition").input_shape.members["memory"].documentation
    value = r"(\d+)\s*(GB)?(?:\s*\([^)]*\))?"
    sizes: dict[int, frozenset[int]] = {}
    for item in re.findall(r"<li>(.*?)</li>", doc, re.S):
        text = re.sub(r"<[^>]+>", "", item).strip()
        memory, _, cpu = text.partition(" - Available cpu values: ")
        span = re.match(rf"Between {value} and {value} in (?:increments of )?{value}", memory)
        if span is None:
            mib = {int(n) for n in re.findall(r"(\d+) \(", memory)}
        else:
            low, high, step = (int(n) * (1024 if gb else 1)
                               for n, gb in zip(span.groups()[::2], span.groups()[1::2],
                                                strict=True))
            mib = set(range(low, high + 1, step))
        sizes[int(cpu.split()[0])] = frozenset(mib)
    return sizes


def test_fargate_table_matches_the_one_in_botocores_model_documentation() -> None:
    assert _documented_fargate_sizes() == FARGATE_SIZES


# --- IAM ---------------------------------------------------------------------------------------

# the one action AWS defines on no resource at all: "*" is the only Resource it accepts
STAR_RESOURCE_ACTIONS = frozenset({"ecr:GetAuthorizationToken"})


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_problems(doc: Any) -> list[str]:
    """Shape and wildcard problems of an identity policy (empty when fine)."""
    if not isinstance(doc, dict) or doc.get("Version") != "2012-10-17":
        return ["Version must be 2012-10-17"]
    statements = doc.get("Statement")
    if not isinstance(statements, list) or not statements:
        return ["Statement must be a non-empty list"]
    problems = []
    for i, st in enumerate(statements):
        where = f"Statement[{i}] ({st.get('Sid', 'no Sid')})"
        if st.get("Effect") != "Allow":
            problems.append(f"{where}: only Allow statements are expected here")
        if {"NotAction", "NotResource"} & set(st):
            problems.append(f"{where}: NotAction/NotResource grant everything else")
        actions = [str(a) for a in _as_list(st.get("Action", []))]
        resources = [str(r) for r in _as_list(st.get("Resource", []))]
        if not actions or not resources:
            problems.append(f"{where}: needs Action and Resource")
        for action in actions:
            if "*" in action or not re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action):
                problems.append(f"{where}: action {action!r} is a wildcard or malformed")
        if "*" in resources and not set(actions) <= STAR_RESOURCE_ACTIONS:
            problems.append(f"{where}: Resource '*' for {sorted(set(actions))}")
        for resource in resources:
            if resource != "*" and not resource.startswith("arn:aws"):
                problems.append(f"{where}: resource {resource!r} is not an ARN")
    return problems


def grants(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (action, resource) pair the policy allows."""
    return {(str(a), str(r)) for st in doc["Statement"] if st.get("Effect") == "Allow"
            for a in _as_list(st["Action"]) for r in _as_list(st["Resource"])}


@pytest.mark.parametrize("path", [TASK_ROLE_POLICY, STATE_INIT_POLICY, EXECUTION_ROLE_POLICY],
                         ids=lambda p: p.name)
def test_policy_is_valid_and_has_no_wildcards(path: Path) -> None:
    assert policy_problems(_load(path)) == []


@pytest.mark.parametrize(("mutate", "caught_as"), [
    pytest.param(lambda d: d.update(Version="2008-10-17"), "Version", id="the old policy language version"),
    pytest.param(lambda d: d["Statement"][0].update(Action="*"), "wildcard", id="Action star"),
    pytest.param(lambda d: d["Statement"][0].update(Action=["dynamodb:*"]), "wildcard", id="every action of a service"),
    pytest.param(lambda d: d["Statement"][0].update(Resource="*"), "Resource '*'", id="Resource star"),
    pytest.param(lambda d: d["Statement"][0].update(NotResource=["arn:aws:s3:::x"]), "NotAction/NotResource", id="NotResource"),
])
def test_policy_check_catches_a_wildcard(mutate: Callable[[dict[str, Any]], None],
                                         caught_as: str) -> None:
    doc = copy.deepcopy(_load(TASK_ROLE_POLICY))
    mutate(doc)
    assert any(caught_as in p for p in policy_problems(doc))


def _api_names(service: str, snake_names: set[str]) -> set[str]:
    """botocore client method names -> IAM action names, through the service model."""
    model = _SESSION.get_service_model(service)
    by_method = {xform_name(op): op for op in model.operation_names}
    return {f"{model.signing_name}:{by_method[n]}" for n in snake_names}


def _store_runtime_actions() -> set[str]:
    # every DynamoDB call the store makes goes through DynamoDBStore._call("operation", ...)
    called = set(re.findall(r'self\._call\(\s*"(\w+)"', inspect.getsource(dynamodb)))
    return _api_names("dynamodb", called)


def _store_init_actions() -> set[str]:
    source = inspect.getsource(dynamodb.DynamoDBStore.init)
    called = set(re.findall(r"\bdb\.(\w+)\(", source)) - {"get_waiter"}
    waiters = _SESSION.get_waiter_model("dynamodb")
    by_name = {xform_name(n): n for n in waiters.waiter_names}
    waited = {waiters.get_waiter(by_name[w]).operation
              for w in re.findall(r'get_waiter\("(\w+)"\)', source)}
    return _api_names("dynamodb", called) | {f"dynamodb:{op}" for op in waited}


def _account_and_region() -> tuple[str, str]:
    task = _load(TASK_FILE)
    account = str(task["taskRoleArn"]).split(":")[4]
    region = str(yaml.safe_load(PRODUCTION_CONFIG.read_text())["state"]["region"])
    return account, region


def _table_arn() -> str:
    account, region = _account_and_region()
    table = yaml.safe_load(PRODUCTION_CONFIG.read_text())["state"]["table"]
    return f"arn:aws:dynamodb:{region}:{account}:table/{table}"


def aws_secret_arns(node: Any, region: str, account: str) -> set[str]:
    """The secret ARNs (IAM resources) of every ``aws-secretsmanager:`` reference in a config."""
    if isinstance(node, str):
        if not node.startswith("aws-secretsmanager:"):
            return set()
        target = node.partition(":")[2].partition("#")[0]
        # a name matches any version suffix Secrets Manager appended to it
        return {target if target.startswith("arn:")
                else f"arn:aws:secretsmanager:{region}:{account}:secret:{target}-??????"}
    values = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return set().union(set(), *(aws_secret_arns(v, region, account) for v in values))


def test_task_role_covers_exactly_the_aws_services_the_production_config_uses() -> None:
    sources = [p.read_text() for d in ("receiver", "providers") for p in (ROOT / d).rglob("*.py")]
    in_code = {m for s in sources for m in re.findall(r'\.client\(\s*"(\w+)"', s)}
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    account, region = _account_and_region()
    used = {"dynamodb"} if config["state"]["backend"] == "dynamodb" else set()
    used |= {"codepipeline"} if config["launcher"].get("backend", "codepipeline") == \
        "codepipeline" else set()
    used |= {"secretsmanager"} if aws_secret_arns(config, region, account) else set()
    used |= {"sns"} if any("sns" in n for n in config.get("notifications", ())) else set()
    assert used <= in_code  # the features named above really are these clients
    covered = {action.split(":")[0] for action, _ in grants(_load(TASK_ROLE_POLICY))}
    assert covered == used


def test_task_role_starts_exactly_the_configured_pipelines() -> None:
    account, _ = _account_and_region()
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    region = config["launcher"]["region"]
    # start them, poll their executions' outcomes, find their latest success (state seed)
    expected = {(action, f"arn:aws:codepipeline:{region}:{account}:{p['name']}")
                for repo in config["repositories"] for p in repo["pipelines"]
                for action in LAUNCHER_ACTIONS}
    granted = {g for g in grants(_load(TASK_ROLE_POLICY)) if g[0].startswith("codepipeline:")}
    assert granted == expected


LAUNCHER_ACTIONS = {"codepipeline:StartPipelineExecution", "codepipeline:GetPipelineExecution",
                    "codepipeline:ListPipelineExecutions"}


def test_launcher_calls_exactly_the_granted_codepipeline_actions() -> None:
    from receiver import launcher

    source = inspect.getsource(launcher)
    called = set(re.findall(r"_get_client\(\)\.(\w+)\(", source)) | set(
        re.findall(r'self\._call\("(\w+)"', source))
    assert _api_names("codepipeline", called) == LAUNCHER_ACTIONS


def test_task_role_grants_exactly_the_dynamodb_calls_the_store_makes() -> None:
    table = _table_arn()
    indexes = [g["IndexName"] for g in dynamodb.table_definition("x")["GlobalSecondaryIndexes"]]
    # the store queries its indexes and nothing else on them
    expected = {(action, table) for action in _store_runtime_actions()} | {
        ("dynamodb:Query", f"{table}/index/{name}") for name in indexes}
    granted = {g for g in grants(_load(TASK_ROLE_POLICY)) if g[0].startswith("dynamodb:")}
    assert granted == expected


def test_table_creation_is_not_in_the_task_role_but_in_the_state_init_policy() -> None:
    init = _store_init_actions()
    assert init  # CreateTable, DescribeTable (the waiter), Describe/UpdateTimeToLive
    task_actions = {a for a, _ in grants(_load(TASK_ROLE_POLICY))}
    assert not init & task_actions
    assert grants(_load(STATE_INIT_POLICY)) == {(a, _table_arn()) for a in init}


def test_execution_role_reads_exactly_the_injected_secrets() -> None:
    container = service_container(_load(TASK_FILE))
    assert container is not None
    expected = {("secretsmanager:GetSecretValue", s["valueFrom"]) for s in container["secrets"]}
    granted = {g for g in grants(_load(EXECUTION_ROLE_POLICY))
               if g[0].startswith("secretsmanager:")}
    assert granted == expected


def test_task_role_reads_exactly_the_secrets_the_config_fetches_itself() -> None:
    # env: references arrive through the execution role; only aws-secretsmanager: ones are
    # read by the service at run time, with the task role
    account, region = _account_and_region()
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    expected = {("secretsmanager:GetSecretValue", arn)
                for arn in aws_secret_arns(config, region, account)}
    granted = {g for g in grants(_load(TASK_ROLE_POLICY)) if g[0].startswith("secretsmanager:")}
    assert granted == expected


def test_execution_role_pulls_only_the_task_image_and_writes_only_its_log_group() -> None:
    container = service_container(_load(TASK_FILE))
    assert container is not None
    registry, _, repository = container["image"].partition("/")
    account, _, _, region, *_ = registry.split(".")
    repository = re.split(r"[:@]", repository)[0]
    options = container["logConfiguration"]["options"]
    log_group = (f"arn:aws:logs:{options['awslogs-region']}:{account}:log-group:"
                 f"{options['awslogs-group']}:log-stream:*")
    expected = {("ecr:GetAuthorizationToken", "*")} | {
        (a, f"arn:aws:ecr:{region}:{account}:repository/{repository}")
        for a in ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                  "ecr:GetDownloadUrlForLayer")} | {
        (a, log_group) for a in ("logs:CreateLogStream", "logs:PutLogEvents")}
    granted = {g for g in grants(_load(EXECUTION_ROLE_POLICY))
               if not g[0].startswith("secretsmanager:")}
    assert granted == expected
