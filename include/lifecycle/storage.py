"""The artifact store: one place that knows file:// from s3://.

Layout: <ARTIFACT_ROOT>/<pipeline>/<run key>/{raw,validation,features,training,evaluation,prediction,drift}/...
Every write is a whole object (a temp file renamed into place, or one S3 PUT), so no reader sees half of one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lifecycle.settings import get_settings


class ArtifactStoreError(RuntimeError):
    """The artifact store could not be reached or refused a read or write."""


def run_key(run_id: str) -> str:
    """An Airflow run id made safe for paths and object keys: never empty, never '.' or '..'."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
    if not key.strip("."):
        key = "run_" + hashlib.sha256(run_id.encode()).hexdigest()[:16]
    return key


def pipeline_root(pipeline: str) -> str:
    return f"{get_settings().artifact_root}/{pipeline}/"


def artifact_uri(pipeline: str, run_id: str, *parts: str) -> str:
    return "/".join([get_settings().artifact_root, pipeline, run_key(run_id), *parts])


class OutsideAllowedPrefixError(ValueError):
    """A URI from a trigger form or an event that points outside where the pipeline may read."""


def _normalised(uri: str) -> tuple[str, str]:
    scheme, bucket, key = _split(uri)
    if scheme == "s3":
        if any(part in (".", "..") for part in key.split("/")):
            raise OutsideAllowedPrefixError(f"{uri} has '.' or '..' segments")
        return "s3", f"{bucket}/{key}"
    return "file", os.path.realpath(key)  # symlinks and '..' resolved before comparing


def require_under(uri: str, prefixes: list[str], what: str) -> str:
    """`uri` when it lies under one of `prefixes` (whole path segments, not string prefixes), else an error."""
    scheme, path = _normalised(uri)
    for prefix in prefixes:
        prefix_scheme, root = _normalised(prefix)
        root = root.rstrip("/")
        if scheme == prefix_scheme and (path == root or path.startswith(root + "/")):
            return uri
    allowed = ", ".join(prefixes) or "nowhere (no prefix configured)"
    raise OutsideAllowedPrefixError(f"{what} {uri} is outside the prefixes this pipeline may read: {allowed}")


def _split(uri: str) -> tuple[str, str, str]:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return "s3", parsed.netloc, parsed.path.lstrip("/")
    if parsed.scheme in ("file", ""):
        return "file", "", parsed.path if parsed.scheme else uri
    raise ArtifactStoreError(f"unsupported artifact URI scheme {parsed.scheme!r} in {uri!r} (file:// or s3://)")


@lru_cache(maxsize=1)
def s3_client() -> Any:
    """A boto3 client with the endpoint and keys of the Airflow connection aws_default when it exists."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    conn = _aws_default_connection()
    if conn:
        kwargs = {k: v for k, v in conn.items() if v}
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return boto3.client("s3", config=config, **kwargs)


def _aws_default_connection() -> dict[str, Any] | None:
    """Endpoint and keys from AIRFLOW_CONN_AWS_DEFAULT (JSON or URI form) without needing Airflow."""
    raw = os.environ.get("AIRFLOW_CONN_AWS_DEFAULT")
    if not raw:
        return None
    if raw.lstrip().startswith("{"):
        data = json.loads(raw)
        extra = data.get("extra") or {}
        if isinstance(extra, str):
            extra = json.loads(extra)
        login, password = data.get("login"), data.get("password")
    else:
        from urllib.parse import parse_qsl, unquote

        parsed = urlparse(raw)
        extra = dict(parse_qsl(parsed.query))
        login = unquote(parsed.username) if parsed.username else None
        password = unquote(parsed.password) if parsed.password else None
    return {
        "aws_access_key_id": login,
        "aws_secret_access_key": password,
        "endpoint_url": extra.get("endpoint_url"),
        "region_name": extra.get("region_name"),
    }


def write_bytes(uri: str, data: bytes) -> str:
    scheme, bucket, key = _split(uri)
    if scheme == "s3":
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as err:  # botocore raises many types; name the URI in one
            raise ArtifactStoreError(f"could not write {uri}: {err}") from err
        return uri
    path = Path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            staged = tmp.name
            tmp.write(data)
        os.replace(staged, path)
    except OSError as err:
        if "staged" in locals():
            Path(staged).unlink(missing_ok=True)
        raise ArtifactStoreError(f"could not write {uri}: {err}") from err
    return uri


def read_bytes(uri: str) -> bytes:
    scheme, bucket, key = _split(uri)
    try:
        if scheme == "s3":
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(key).read_bytes()
    except Exception as err:
        raise ArtifactStoreError(f"could not read {uri}: {err}") from err


def exists(uri: str) -> bool:
    """Whether the object is there; an unreachable store is an error, not a 'no'."""
    scheme, bucket, key = _split(uri)
    if scheme == "s3":
        from botocore.exceptions import ClientError

        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ArtifactStoreError(f"could not check {uri}: {err}") from err
        except Exception as err:
            raise ArtifactStoreError(f"could not reach the store for {uri}: {err}") from err
    return Path(key).exists()


def glob(pattern: str) -> list[str]:
    """The URIs matching a glob pattern (``*``, ``?``, ``[...]``, ``**``), sorted; local or s3://.

    On S3 the listing starts at the pattern's literal prefix, so only that part of the bucket is read.
    """
    import glob as globlib

    scheme, bucket, key = _split(pattern)
    if scheme == "file":
        found = sorted(globlib.glob(key, recursive=True))
        return [f"file://{p}" if pattern.startswith("file://") else p for p in found]
    prefix = re.split(r"[*?\[]", key, maxsplit=1)[0]
    matcher = _glob_regex(key)
    keys: list[str] = []
    try:
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []) if matcher.fullmatch(item["Key"]))
    except Exception as err:
        raise ArtifactStoreError(f"could not list {pattern}: {err}") from err
    return [f"s3://{bucket}/{k}" for k in sorted(keys)]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A key pattern as a regex with the shell's meaning: ``*`` stays within one path segment."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def write_json(uri: str, payload: Any) -> str:
    return write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_parquet(uri: str, frame: Any) -> dict[str, Any]:
    """Write a frame as Parquet; return its URI, content hash, row count and schema."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    write_bytes(uri, data)
    return {
        "uri": uri,
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": int(len(frame)),
        "schema": {str(c): str(t) for c, t in frame.dtypes.items()},
    }


class TamperedArtifactError(ValueError):
    """An artifact whose content is not what was written (its sha256 was recorded at write)."""


def read_parquet(uri: str, sha256: str | None = None) -> Any:
    """Read a Parquet artifact; with `sha256` (recorded when it was written), refuse any other content."""
    import pandas as pd

    data = read_bytes(uri)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise TamperedArtifactError(
            f"{uri} has changed since it was written (sha256 {hashlib.sha256(data).hexdigest()[:12]}…, "
            f"recorded {sha256[:12]}…): refusing to use it"
        )
    return pd.read_parquet(io.BytesIO(data))


def upload_file(path: str | Path, uri: str) -> str:
    """Move a finished local file into the store as one object (S3 multipart streams it, no full read)."""
    scheme, bucket, key = _split(uri)
    if scheme == "s3":
        try:
            s3_client().upload_file(str(path), bucket, key)
        except Exception as err:
            raise ArtifactStoreError(f"could not write {uri}: {err}") from err
        return uri
    target = Path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        shutil.copyfile(path, staged)
        os.replace(staged, target)
    except OSError as err:
        staged.unlink(missing_ok=True)
        raise ArtifactStoreError(f"could not write {uri}: {err}") from err
    return uri


def local_copy(uri: str, directory: str | Path) -> Path:
    """A local file with the object's content: the file itself for file://, a streamed download for s3://."""
    scheme, bucket, key = _split(uri)
    if scheme == "file":
        return Path(key)
    target = Path(directory) / Path(key).name
    try:
        s3_client().download_file(bucket, key, str(target))
    except Exception as err:
        raise ArtifactStoreError(f"could not read {uri}: {err}") from err
    return target


def local_path(uri: str) -> Path | None:
    scheme, _, key = _split(uri)
    return Path(key) if scheme == "file" else None
