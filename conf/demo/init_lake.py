"""The Docker demo's one-shot init: on moto (AWS_ENDPOINT_URL), create the Security Lake-shaped
bucket of the sink's config and its writer role, with the policies ``securitylake-sink iam-policy``
prints. Idempotent. Usage: ``python init_lake.py [CONFIG]`` (default: the image's config path)."""

from __future__ import annotations

__all__ = ["main"]

import json
import os
import sys
import time
from typing import Any

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

from securitylake_sink.config import ROLE_ARN, load_config
from securitylake_sink.plan import destination_of
from securitylake_sink.setup_helpers import EXTERNAL_ID_PLACEHOLDER, iam_policies

DEFAULT_CONFIG = "/etc/securitylake-sink/config.yaml"
WAIT_SECS = 60  # moto's container may still be starting


def _client(service: str, region: str) -> Any:
    return boto3.client(service, region_name=region)  # type: ignore[call-overload]


def _wait_for_endpoint(s3: Any) -> None:
    deadline = time.monotonic() + WAIT_SECS
    while True:
        try:
            s3.list_buckets()
            return
        except EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def main(argv: list[str]) -> int:
    if not os.environ.get("AWS_ENDPOINT_URL"):
        print("init_lake: AWS_ENDPOINT_URL is not set; this script only prepares a stand-in (moto)", file=sys.stderr)
        return 2
    config = load_config(argv[1] if len(argv) > 1 else DEFAULT_CONFIG)
    destination = destination_of(config)
    role = ROLE_ARN.match(config.auth.role_arn or "")
    if destination.kind != "s3" or destination.bucket is None or role is None or config.auth.external_id is None:
        print("init_lake: the config needs an s3:// destination, auth.role_arn and auth.external_id", file=sys.stderr)
        return 2
    region = destination.region or "us-east-1"
    s3, iam = _client("s3", region), _client("iam", region)
    _wait_for_endpoint(s3)
    try:
        options = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=destination.bucket, **options)
        print(f"init_lake: created bucket {destination.bucket}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
        print(f"init_lake: bucket {destination.bucket} already exists")
    policies = iam_policies(config)
    assert policies.permissions is not None and policies.trust is not None
    # The helper never prints the External ID; the stand-in's trust policy needs the real value.
    trust = json.dumps(policies.trust).replace(EXTERNAL_ID_PLACEHOLDER, config.auth.external_id.get_secret_value())
    name = role["name"]
    try:
        iam.create_role(RoleName=name, Path="/" + role["path"], AssumeRolePolicyDocument=trust)
        print(f"init_lake: created role {config.auth.role_arn}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
            raise
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=trust)
        print(f"init_lake: role {config.auth.role_arn} already exists; trust policy updated")
    permissions = json.dumps(policies.permissions)
    iam.put_role_policy(RoleName=name, PolicyName="securitylake-sink-writer", PolicyDocument=permissions)
    locations = ", ".join(s.location for s in config.destination.sources)
    print(f"init_lake: the role may write {locations}; the trust policy requires the External ID")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
