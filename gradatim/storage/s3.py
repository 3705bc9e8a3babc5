"""S3 access shared by the reconcile shell, the trainer and the report: `s3://bucket/key` URIs, credentials from the environment
or a Secret's data, retries with backoff (botocore's standard mode)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

RETRIES = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=5, read_timeout=60, s3={"addressing_style": "path"})


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        return cls(bucket, key)

    def join(self, name: str) -> S3Location:
        return S3Location(self.bucket, self.key.rstrip("/") + "/" + name if self.key else name)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def client(endpoint: str | None = None, access_key: str | None = None, secret_key: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client; arguments left out come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)."""
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or None, aws_access_key_id=access_key or None,
        aws_secret_access_key=secret_key or None, region_name=region or None, config=RETRIES,
    )


# The operator reads small files between other work: fail fast and say so, rather than stall a worker (a frozen
# S3 accepts connections and never answers). The planner waits out a fault that passes; no retries needed here.
QUICK = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2, read_timeout=4, s3={"addressing_style": "path"})


def client_from_secret(data: Mapping[str, str], access_key_field: str, secret_key_field: str, endpoint: str | None, region: str) -> Any:
    """A quick-failing client with the credentials a pipeline's Secret holds (decoded `data`)."""
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or data.get("AWS_ENDPOINT_URL") or None, aws_access_key_id=data.get(access_key_field),
        aws_secret_access_key=data.get(secret_key_field), region_name=region, config=QUICK,
    )


def read_json(s3: Any, uri: str) -> dict[str, Any] | None:
    """The JSON object at `uri`, or None when there is none."""
    loc = S3Location.parse(uri)
    try:
        body = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return json.loads(body)


def write_json(s3: Any, uri: str, obj: Any) -> None:
    loc = S3Location.parse(uri)
    s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=json.dumps(obj, indent=2, sort_keys=True).encode(), ContentType="application/json")


def count_failures(s3: Any, on_failure: Any) -> None:
    """Calls `on_failure(operation)` for every failed S3 request of this client, retried or not: connection
    errors, 5xx, throttling and refused credentials. (botocore's `needs-retry` event sees every attempt.)"""

    def check(response=None, caught_exception=None, operation=None, **_):
        status = response[0].status_code if response else None
        if caught_exception is not None or (status is not None and (status >= 500 or status in (401, 403, 429))):
            on_failure(getattr(operation, "name", "unknown"))
        return None  # never decides the retry: botocore's own handler does

    s3.meta.events.register("needs-retry.s3", check)
