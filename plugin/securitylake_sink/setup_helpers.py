"""Setup helpers: the least-privilege IAM policies of the writer role (``iam-policy``) and the AWS CLI
commands that register the custom sources (``sources``). No network I/O; never prints a secret.
"""

from __future__ import annotations

__all__ = [
    "CRAWLER_ROLE_PLACEHOLDER",
    "EVENT_CLASS_EXCEPTIONS",
    "EXTERNAL_ID_PLACEHOLDER",
    "KNOWN_EVENT_CLASSES",
    "IamPolicies",
    "SourceCommand",
    "event_class_name",
    "iam_policies",
    "print_iam_policy",
    "print_sources",
    "source_commands",
]

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, TextIO

from securitylake_sink.config import ROLE_ARN, Config
from securitylake_sink.errors import ConfigError, ConfigIssue
from securitylake_sink.lake.url import Destination
from securitylake_sink.ocsf.schema import load_schema
from securitylake_sink.plan import dead_letter_destination, destination_of

POLICY_VERSION = "2012-10-17"
# Shell-style placeholders: the commands expand them from the environment, the policies show them
# for the user to fill in (envsubst works). The External ID itself is never printed.
EXTERNAL_ID_PLACEHOLDER = "${EXTERNAL_ID}"
CRAWLER_ROLE_PLACEHOLDER = "${CRAWLER_ROLE_ARN}"
REGION_PLACEHOLDER = "${AWS_REGION}"
PRINCIPAL_PLACEHOLDER = "${PROVIDER_ACCOUNT_ID}"
# Security Lake's eventClasses spell most classes as the OCSF caption in upper snake case; these
# are the ones it names differently (CreateCustomLogSource API reference, "eventClasses").
EVENT_CLASS_EXCEPTIONS: dict[int, str] = {
    1001: "FILE_ACTIVITY",  # File System Activity
    1002: "KERNEL_EXTENSION",  # Kernel Extension Activity
    1010: "RESOURCE_ACTIVITY",  # Windows Resource Activity (1.0.0-rc.2)
    3003: "AUTHORIZATION",  # Authorize Session
    3004: "ENTITY_MANAGEMENT_AUDIT",  # Entity Management
    5001: "INVENTORY_INFO",  # Device Inventory Info
    5002: "CONFIG_STATE",  # Device Config State
}
# The names Security Lake documents (CreateCustomLogSource API reference and SDK models, plus
# DETECTION_FINDING); another derived name is printed with a note to check it.
KNOWN_EVENT_CLASSES = frozenset(
    {
        "ACCESS_ACTIVITY",
        "FILE_ACTIVITY",
        "KERNEL_ACTIVITY",
        "KERNEL_EXTENSION",
        "MEMORY_ACTIVITY",
        "MODULE_ACTIVITY",
        "PROCESS_ACTIVITY",
        "REGISTRY_KEY_ACTIVITY",
        "REGISTRY_VALUE_ACTIVITY",
        "RESOURCE_ACTIVITY",
        "SCHEDULED_JOB_ACTIVITY",
        "SECURITY_FINDING",
        "DETECTION_FINDING",
        "ACCOUNT_CHANGE",
        "AUTHENTICATION",
        "AUTHORIZATION",
        "ENTITY_MANAGEMENT_AUDIT",
        "DHCP_ACTIVITY",
        "NETWORK_ACTIVITY",
        "DNS_ACTIVITY",
        "FTP_ACTIVITY",
        "HTTP_ACTIVITY",
        "RDP_ACTIVITY",
        "SMB_ACTIVITY",
        "SSH_ACTIVITY",
        "RFB_ACTIVITY",
        "SMTP_ACTIVITY",
        "EMAIL_ACTIVITY",
        "CONFIG_STATE",
        "INVENTORY_INFO",
        "API_ACTIVITY",
        "CLOUD_API",
        "CLOUD_STORAGE",
        "CONTAINER_LIFECYCLE",
        "DATABASE_LIFECYCLE",
        "VIRTUAL_MACHINE_ACTIVITY",
    }
)
# The LogProviderRole is AmazonSecurityLake-Provider-<source>-<region>: at most 64 characters.
MAX_SOURCE_NAME = 20
PRINCIPAL_ARN = re.compile(
    r"^arn:(?P<partition>aws|aws-cn|aws-us-gov):(?:iam|sts)::(?P<account>[0-9]{12}):"
    r"(?:root|(?:user|role|assumed-role|federated-user)/[\x21-\x7e]+)\Z"
)
ACCOUNT_ID = re.compile(r"^[0-9]{12}\Z")
OPT_PRINCIPAL = "--principal"
OPT_CRAWLER = "--crawler-role-arn"


@dataclass(frozen=True, slots=True)
class IamPolicies:
    """The writer role's permissions policy and trust policy (None when no role is configured)."""

    permissions: dict[str, Any] | None
    trust: dict[str, Any] | None
    role_arn: str | None
    principal: str | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SourceCommand:
    """One custom source (a location) and the ``aws securitylake`` command that registers it."""

    location: str
    source_name: str
    source_version: str | None
    class_uids: tuple[int, ...]
    event_classes: tuple[str, ...]
    region: str
    configuration: dict[str, Any]
    argv: tuple[str, ...]
    command: str


def event_class_name(class_uid: int, caption: str) -> str:
    """Security Lake's name of an OCSF event class: the exceptions table, else the caption in
    upper snake case (``API Activity`` → ``API_ACTIVITY``)."""
    if class_uid in EVENT_CLASS_EXCEPTIONS:
        return EVENT_CLASS_EXCEPTIONS[class_uid]
    return re.sub(r"[^A-Za-z0-9]+", "_", caption).strip("_").upper()


def _principal_arn(value: str | None, role_arn: str | None, partition: str, notes: list[str]) -> str | None:
    """The trust policy's principal: ``--principal`` (an ARN or an account id), else the root of
    the role's account (with a note)."""
    if value is not None:
        if ACCOUNT_ID.match(value):
            return f"arn:{partition}:iam::{value}:root"
        if PRINCIPAL_ARN.match(value):
            return value
        raise ConfigError(
            ConfigIssue(
                OPT_PRINCIPAL,
                "must be an IAM ARN (arn:aws:iam::<12 digits>:user/..., role/..., root) or a 12-digit account id",
            )
        )
    match = ROLE_ARN.match(role_arn or "")
    if match is None:
        return None
    root = f"arn:{match['partition']}:iam::{match['account']}:root"
    notes.append(
        f"the trust policy trusts {root} (the role's own account) because no {OPT_PRINCIPAL} was given; "
        f"for least privilege pass {OPT_PRINCIPAL} with the ARN of the sink's base credentials"
    )
    return root


def _object_resource(destination: Destination, location: str) -> str:
    """The ARN of every object under one location (an access point's objects, or the bucket's)."""
    if destination.access_point_arn is not None:
        return f"{destination.access_point_arn}/object/{destination.prefix}{location}*"
    return f"arn:{destination.partition}:s3:::{destination.bucket}/{destination.prefix}{location}*"


def _kms_statement(config: Config, destination: Destination, notes: list[str]) -> dict[str, Any]:
    """kms:GenerateDataKey on ``destination.sse_kms_key_id``, written as an ARN IAM can match: a key
    ARN as is, an alias (name or ARN) as any key carrying that alias, a key id inside its ARN."""
    key = config.destination.sse_kms_key_id or ""
    statement: dict[str, Any] = {"Sid": "EncryptWithTheLakeKey", "Effect": "Allow", "Action": "kms:GenerateDataKey"}
    role = ROLE_ARN.match(config.auth.role_arn or "")
    partition: str = destination.partition
    region, account = destination.region or "*", role["account"] if role else "*"
    if key.startswith("arn:"):
        _, partition, _, region, account, resource = key.split(":", 5)  # arn:<p>:kms:<region>:<account>:<res>
        if resource.startswith("key/"):
            statement["Resource"] = key
            return statement
        key = resource  # alias/<name>
    if key.startswith("alias/"):
        statement["Resource"] = f"arn:{partition}:kms:{region}:{account}:key/*"
        statement["Condition"] = {"ForAnyValue:StringEquals": {"kms:ResourceAliases": key}}
    else:  # a key id or an mrk- id
        statement["Resource"] = f"arn:{partition}:kms:{region}:{account}:key/{key}"
    if "*" in (region, account):
        notes.append(
            "destination.sse_kms_key_id is not an ARN and the key's region or account is unknown here: "
            "replace the '*' in the kms:GenerateDataKey resource with them (or configure the key ARN)"
        )
    return statement


def iam_policies(config: Config, principal: str | None = None) -> IamPolicies:
    """The policies the writer needs for ``config``; both None for a file lake (nothing to grant).
    Raises ConfigError for a malformed ``principal``."""
    destination = destination_of(config)
    notes: list[str] = []
    if destination.kind == "file":
        notes.append(f"destination {config.destination.url} is a local file:// lake: there is nothing to grant in IAM")
        return IamPolicies(None, None, None, None, notes)
    locations = list(dict.fromkeys(source.location for source in config.destination.sources))
    statements: list[dict[str, Any]] = [
        {
            "Sid": "WriteTheCustomSourceLocations",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": [_object_resource(destination, location) for location in locations],
        }
    ]
    dead_letters = dead_letter_destination(config, destination)
    if dead_letters is not None:  # always outside the source locations (a config rule)
        statements.append(
            {
                "Sid": "WriteTheDeadLetters",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"arn:{dead_letters.partition}:s3:::{dead_letters.bucket}/{dead_letters.prefix}*",
            }
        )
    if config.destination.sse_kms_key_id is not None:
        statements.append(_kms_statement(config, destination, notes))
        notes.append(
            "objects above 256 MiB go up as multipart uploads, which with SSE-KMS also need kms:Decrypt on the key"
        )
    permissions = {"Version": POLICY_VERSION, "Statement": statements}
    role_arn = config.auth.role_arn
    if role_arn is None:
        if principal is not None:
            raise ConfigError(ConfigIssue(OPT_PRINCIPAL, "only applies with auth.role_arn (there is no trust policy)"))
        notes.append(
            f"auth has no role_arn ({config.auth.mode}): attach the permissions policy to the identity of the "
            "credentials; there is no trust policy to set"
        )
        return IamPolicies(permissions, None, None, None, notes)
    trusted = _principal_arn(principal, role_arn, destination.partition, notes)
    trust = {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Sid": "AssumeWithTheExternalId",
                "Effect": "Allow",
                "Principal": {"AWS": trusted},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID_PLACEHOLDER}},
            }
        ],
    }
    notes.append(
        f"replace {EXTERNAL_ID_PLACEHOLDER} in the trust policy with auth.external_id "
        "(e.g. EXTERNAL_ID=... envsubst); it is never printed"
    )
    return IamPolicies(permissions, trust, role_arn, trusted, notes)


def print_iam_policy(config: Config, out: TextIO, err: TextIO, *, principal: str | None, as_json: bool) -> None:
    """``iam-policy``: two labelled JSON documents (or one JSON object); notes on ``err``."""
    policies = iam_policies(config, principal)
    if as_json:
        document = {
            "role_arn": policies.role_arn,
            "principal": policies.principal,
            "permissions_policy": policies.permissions,
            "trust_policy": policies.trust,
            "notes": policies.notes,
        }
        print(json.dumps(document, indent=2), file=out)
        return
    for note in policies.notes:
        print(f"note: {note}", file=err)
    if policies.permissions is None:
        print("nothing to grant: the destination is a local file:// lake", file=out)
        return
    who = policies.role_arn or "the sink's credentials"
    print(f"# Permissions policy of {who}", file=out)
    print(json.dumps(policies.permissions, indent=2), file=out)
    if policies.trust is not None:
        print(f"\n# Trust policy of {who} (principal {policies.principal})", file=out)
        print(json.dumps(policies.trust, indent=2), file=out)


def _split_location(location: str) -> tuple[str, str | None]:
    """``ext/<name>/`` or ``ext/<name>/<version>/`` → (name, version)."""
    parts = location.strip("/").split("/")
    return parts[1], parts[2] if len(parts) > 2 else None


def _shell_json(document: dict[str, Any], placeholders: tuple[str, ...]) -> str:
    """``document`` as one single-quoted shell word, each placeholder left outside the quotes so
    the shell expands it (``'{"a":"'"${X}"'"}'``)."""
    text = shlex.quote(json.dumps(document, separators=(",", ":")))
    for placeholder in placeholders:
        text = text.replace(placeholder, f"'\"{placeholder}\"'")
    return text


def _provider_account(principal: str | None, config: Config, notes: list[str]) -> str:
    """providerIdentity.principal: an account id (Security Lake takes 12 digits here)."""
    if principal is not None:
        if ACCOUNT_ID.match(principal):
            return principal
        match = PRINCIPAL_ARN.match(principal)
        if match is None:
            raise ConfigError(
                ConfigIssue(OPT_PRINCIPAL, "must be an IAM ARN or a 12-digit account id (the log provider's account)")
            )
        return match["account"]
    role = ROLE_ARN.match(config.auth.role_arn or "")
    if role is not None:
        notes.append(
            f"providerIdentity.principal is {role['account']}, the account of auth.role_arn, because no "
            f"{OPT_PRINCIPAL} was given; pass the account of the sink's base credentials if it differs"
        )
        return role["account"]
    notes.append(f"no auth.role_arn and no {OPT_PRINCIPAL}: set {PRINCIPAL_PLACEHOLDER} to the provider's account id")
    return PRINCIPAL_PLACEHOLDER


def _classes_by_location(config: Config, notes: list[str]) -> dict[str, list[int]]:
    """location → its named classes; ``*`` and class 0 left out with a note."""
    by_location: dict[str, list[int]] = {}
    for source in config.destination.sources:
        if source.class_uid == "*":
            notes.append(f"the '*' location {source.location} is left out: a custom source registers named classes")
        elif source.class_uid == 0:
            notes.append(f"class 0 (Base Event) at {source.location} is left out: Security Lake does not register it")
        else:
            by_location.setdefault(source.location, []).append(source.class_uid)
    return by_location


def _event_classes(location: str, uids: list[int], version: str, notes: list[str]) -> tuple[str, ...]:
    """Security Lake's names of a location's classes, with a note on what looks wrong."""
    schema = load_schema(version)
    if len(uids) > 1:
        notes.append(f"{location} holds {len(uids)} classes: Security Lake advises one OCSF class per source")
    classes = tuple(event_class_name(uid, schema.class_info(uid).caption) for uid in uids)
    for uid, event_class in zip(uids, classes, strict=True):
        if event_class not in KNOWN_EVENT_CLASSES:
            notes.append(
                f"class {uid} is {event_class}, a name Security Lake's API reference does not list: "
                "check `aws securitylake create-custom-log-source help` before registering it"
            )
    return classes


def source_commands(
    config: Config, *, principal: str | None = None, crawler_role_arn: str | None = None
) -> tuple[list[SourceCommand], list[str]]:
    """One ``aws securitylake create-custom-log-source`` per configured location (classes ``*``
    and 0 left out), and notes. Raises ConfigError for a malformed option."""
    destination = destination_of(config)
    notes: list[str] = []
    if destination.kind == "file":
        notes.append(f"destination {config.destination.url} is a local file:// lake: there is no source to register")
        return [], notes
    if crawler_role_arn is not None and not ROLE_ARN.match(crawler_role_arn):
        raise ConfigError(ConfigIssue(OPT_CRAWLER, "must be an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)"))
    by_location = _classes_by_location(config, notes)
    account = _provider_account(principal, config, notes)
    region = destination.region or REGION_PLACEHOLDER
    if destination.region is None:
        notes.append(f"the bucket's region is looked up at start-up: set {REGION_PLACEHOLDER} to it")
    # The shell expands a placeholder outside single quotes; "${AWS_REGION}" too.
    shell_region = f'"{region}"' if region == REGION_PLACEHOLDER else shlex.quote(region)
    placeholders = (CRAWLER_ROLE_PLACEHOLDER, EXTERNAL_ID_PLACEHOLDER, PRINCIPAL_PLACEHOLDER)
    commands: list[SourceCommand] = []
    for location, uids in by_location.items():
        name, version = _split_location(location)
        if len(name) > MAX_SOURCE_NAME:
            notes.append(
                f"source name {name!r} ({location}) is longer than {MAX_SOURCE_NAME} characters, which "
                "Security Lake refuses (its provider role name would pass 64 characters)"
            )
        classes = _event_classes(location, uids, config.ocsf.version, notes)
        configuration = {
            "crawlerConfiguration": {"roleArn": crawler_role_arn or CRAWLER_ROLE_PLACEHOLDER},
            "providerIdentity": {"externalId": EXTERNAL_ID_PLACEHOLDER, "principal": account},
        }
        argv = ["aws", "securitylake", "create-custom-log-source", "--source-name", name]
        if version is not None:
            argv += ["--source-version", version]
        argv += ["--event-classes", *classes]
        words = [shlex.quote(word) for word in argv]
        words += ["--configuration", _shell_json(configuration, placeholders), "--region", shell_region]
        argv += ["--configuration", json.dumps(configuration, separators=(",", ":")), "--region", region]
        commands.append(
            SourceCommand(
                location, name, version, tuple(uids), classes, region, configuration, tuple(argv), " ".join(words)
            )
        )
    return commands, notes


def print_sources(
    config: Config,
    out: TextIO,
    err: TextIO,
    *,
    principal: str | None,
    crawler_role_arn: str | None,
    as_json: bool,
) -> None:
    """``sources``: a commented shell script (or one JSON object); notes on ``err``."""
    commands, notes = source_commands(config, principal=principal, crawler_role_arn=crawler_role_arn)
    if as_json:
        document = {
            "sources": [
                {
                    "location": c.location,
                    "source_name": c.source_name,
                    "source_version": c.source_version,
                    "class_uids": list(c.class_uids),
                    "event_classes": list(c.event_classes),
                    "region": c.region,
                    "configuration": c.configuration,
                    "command": c.command,
                }
                for c in commands
            ],
            "notes": notes,
        }
        print(json.dumps(document, indent=2), file=out)
        return
    for note in notes:
        print(f"note: {note}", file=err)
    if not commands:
        print("# nothing to register: no location of a named OCSF class in destination.sources", file=out)
        return
    need = [EXTERNAL_ID_PLACEHOLDER]
    if crawler_role_arn is None:
        need.append(CRAWLER_ROLE_PLACEHOLDER)
    names = " and ".join(p.strip("${}") for p in need)
    print(f"# Register the custom sources of {config.destination.url} in Security Lake, one per location.", file=out)
    print(f"# The commands read {names} from the environment (the Glue crawler role, the", file=out)
    print("# External ID of auth.external_id): export them first.", file=out)
    for command in commands:
        classes = ", ".join(
            f"{uid} {name}" for uid, name in zip(command.class_uids, command.event_classes, strict=True)
        )
        print(f"\n# {command.location}: class {classes}", file=out)
        print(command.command, file=out)
