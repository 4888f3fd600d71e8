"""The artifact store: one place that knows file:// from s3://, on fsspec (s3fs for S3, fsspec's local filesystem).

Layout: <ARTIFACT_ROOT>/<pipeline>/<run key>/{raw,validation,features,training,evaluation,prediction,drift}/...
Every write is a whole object (a temp file renamed into place, or one S3 PUT), so no reader sees half of one.

The S3 keys and endpoint come from an Airflow connection (LIFECYCLE_S3_CONN_ID, default aws_default; login/password,
extras endpoint_url, region_name, aws_session_token), looked up through `airflow.sdk.Connection.get`: in a task that
asks the API server and any configured secrets backend, elsewhere the AIRFLOW_CONN_* variables and the configured
backends. Where Airflow is not installed (a clean virtualenv running the portable check) AIRFLOW_CONN_<ID> is read
with the same JSON/URI conventions. With no such connection, botocore's own chain applies (AWS_* variables, a role).

Why fsspec directly rather than Airflow's ObjectStoragePath: this module is called by pure modules that import no
Airflow and by processes that are not tasks (the CLI, serving, benchmarks); ObjectStoragePath sits on the same
fsspec filesystems but resolves its connection through the amazon provider's hook and pulls in Airflow (~3 s) for a
local file. Here Airflow is imported only when an s3:// URI is first used, and only for the connection lookup.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import uuid
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.config.settings import get_settings

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


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
    """(scheme, bucket, key or path). Not urlparse: a glob's '?' or a '#' in a name is no query or fragment."""
    scheme, sep, rest = uri.partition("://")
    if not sep and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) is None:
        return "file", "", uri
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        return "s3", bucket, key.lstrip("/")
    if scheme == "file":
        return "file", "", rest if rest.startswith("/") else "/" + rest.partition("/")[2]  # file://host/p: /p
    raise ArtifactStoreError(f"unsupported artifact URI scheme {uri.split(':', 1)[0]!r} in {uri!r} (file:// or s3://)")


# botocore's retries under s3fs's own; the timeouts keep an unreachable endpoint from hanging a task.
_S3_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 30}
# What, besides the connection, decides which credentials and endpoint botocore would use.
_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_PROFILE")
_READ_CHUNK = 2**20
_s3_filesystems: dict[tuple[Any, ...], Any] = {}  # s3fs filesystems and boto3 clients


def s3_options() -> dict[str, Any]:
    """The S3 keys, endpoint and region of the configured Airflow connection; {} when there is none."""
    return dict(_s3_options_for(*_s3_cache_key()))


def _s3_cache_key() -> tuple[Any, ...]:
    """One resolution per process, per connection id and per value of the variables that could change it."""
    conn_id = get_settings().s3_conn_id
    return (conn_id, os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}"), *map(os.environ.get, _AWS_ENV), os.getpid())


@lru_cache(maxsize=8)
def _s3_options_for(conn_id: str, *_: Any) -> tuple[tuple[str, Any], ...]:
    fields = _airflow_connection(conn_id)
    if fields is None:
        return ()
    login, password, extra = fields
    options = {
        "aws_access_key_id": login,
        "aws_secret_access_key": password,
        "aws_session_token": extra.get("aws_session_token"),
        "endpoint_url": extra.get("endpoint_url"),
        "region_name": extra.get("region_name"),
    }
    return tuple((k, v) for k, v in options.items() if v)


def _airflow_connection(conn_id: str) -> tuple[str | None, str | None, dict[str, Any]] | None:
    """(login, password, extras) of the connection through Airflow's lookup, or None when it is not defined."""
    try:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:  # no Airflow in this virtualenv: its environment-variable convention, read here
        return _connection_from_env(conn_id)
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    except Exception as err:
        raise ArtifactStoreError(f"could not look up the Airflow connection {conn_id!r} for S3: {err}") from err
    return conn.login, conn.password, conn.extra_dejson


def _connection_from_env(conn_id: str) -> tuple[str | None, str | None, dict[str, Any]] | None:
    """AIRFLOW_CONN_<ID> in Airflow's JSON or URI form, for processes without Airflow."""
    from urllib.parse import parse_qsl, unquote, urlparse

    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = os.environ.get(name)
    if not raw:
        return None
    if raw.lstrip().startswith("{"):
        try:
            data = json.loads(raw)
            extra = data.get("extra") or {}
            extra = json.loads(extra) if isinstance(extra, str) else extra
        except (json.JSONDecodeError, AttributeError) as err:
            raise ArtifactStoreError(f"{name} is not a JSON connection: {err}") from err
        return data.get("login"), data.get("password"), extra
    parsed = urlparse(raw)
    extra = dict(parse_qsl(parsed.query))
    if "__extra__" in extra:  # Airflow's URI form for nested extras
        extra = json.loads(extra["__extra__"])
    login = unquote(parsed.username) if parsed.username else None
    password = unquote(parsed.password) if parsed.password else None
    return login, password, extra


def _s3_filesystem() -> AbstractFileSystem:
    """The s3fs filesystem for the current connection, made once per process and connection."""
    key = _s3_cache_key()
    fs = _s3_filesystems.get(key)
    if fs is None:
        import s3fs

        options = dict(_s3_options_for(*key))
        fs = s3fs.S3FileSystem(
            key=options.get("aws_access_key_id"),
            secret=options.get("aws_secret_access_key"),
            token=options.get("aws_session_token"),
            endpoint_url=options.get("endpoint_url"),
            client_kwargs={"region_name": options["region_name"]} if "region_name" in options else None,
            config_kwargs=_S3_CONFIG,
            use_listings_cache=False,  # another process writes the objects this one checks for: never a stale "no"
            skip_instance_cache=True,  # cached here, keyed by what decides the credentials
        )
        _s3_filesystems[key] = fs
    return fs


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for a URI's scheme and the path it knows the object by (bucket/key, or a local path)."""
    scheme, bucket, key = _split(uri)
    if scheme == "s3":
        return _s3_filesystem(), f"{bucket}/{key}"
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), key


def _boto_client() -> Any:
    """A boto3 client per process and connection, like the filesystem (s3_client is cleared by hand)."""
    key = ("boto3", *_s3_cache_key())
    client = _s3_filesystems.get(key)
    if client is None:
        client = _s3_filesystems[key] = s3_client.__wrapped__()
    return client


@lru_cache(maxsize=1)
def s3_client() -> Any:
    """A boto3 client on the same connection, for what the store itself does not do (creating a bucket)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(**_S3_CONFIG), **s3_options())


def write_bytes(uri: str, data: bytes | memoryview) -> str:
    fs, path = filesystem(uri)
    if fs.protocol[0] == "s3":
        _put_object(fs, uri, path, io.BytesIO(data))
        return uri
    _replace_local(uri, path, lambda staged: Path(staged).write_bytes(data))
    return uri


def _put_object(fs: AbstractFileSystem, uri: str, path: str, body: io.BytesIO) -> None:
    """One PUT streamed from `body` (s3fs's pipe_file would copy the bytes once more)."""
    bucket, _, key = path.partition("/")
    try:
        body.seek(0)
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body)
    except Exception as err:  # botocore and aiohttp raise many types; name the URI in one
        raise ArtifactStoreError(f"could not write {uri}: {err}") from err


def _replace_local(uri: str, path: str, write: Any) -> None:
    """Write a sibling temp file, then rename it over `path`: fsspec's local files are written in place."""
    target = Path(path)
    staged = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(staged)
        os.replace(staged, target)
    except OSError as err:
        staged.unlink(missing_ok=True)
        raise ArtifactStoreError(f"could not write {uri}: {err}") from err


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        return fs.cat_file(path)
    except Exception as err:
        raise ArtifactStoreError(f"could not read {uri}: {err}") from err


def _read_whole(uri: str) -> bytes | bytearray:
    """A big object's content in one buffer: on S3 one GET streamed into a buffer of its size (cat_file would hold
    the body's chunks and their join at once, twice the object)."""
    fs, path = filesystem(uri)
    if fs.protocol[0] != "s3":
        return read_bytes(uri)
    from fsspec.asyn import sync

    bucket, _, key = path.partition("/")

    async def fetch() -> bytearray:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        body, size = response["Body"], response["ContentLength"]
        buffer, filled = bytearray(size), 0
        try:
            while chunk := await body.read(_READ_CHUNK):
                buffer[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
        finally:
            body.close()
        if filled != size:
            raise ArtifactStoreError(f"could not read {uri}: {filled} of {size} bytes arrived")
        return buffer

    try:
        return sync(fs.loop, fetch)
    except ArtifactStoreError:
        raise
    except Exception as err:
        raise ArtifactStoreError(f"could not read {uri}: {err}") from err


def exists(uri: str) -> bool:
    """Whether the object is there; an unreachable store is an error, not a 'no'."""
    fs, path = filesystem(uri)
    if fs.protocol[0] != "s3":
        return fs.exists(path)
    bucket, _, key = path.partition("/")
    try:
        fs.call_s3("head_object", Bucket=bucket, Key=key)  # one request; fs.exists would also list on a miss
        return True
    except FileNotFoundError:
        return False
    except Exception as err:
        raise ArtifactStoreError(f"could not check {uri}: {err}") from err


def glob(pattern: str) -> list[str]:
    """The URIs matching a glob pattern (``*``, ``?``, ``[...]``, ``**``), sorted; local or s3://.

    Locally this is Python's glob, which (unlike fsspec's) skips the dot-files a write in flight stages. On S3 the
    listing starts at the pattern's literal prefix, so only that part of the bucket is read.
    """
    import glob as globlib

    scheme, bucket, key = _split(pattern)
    if scheme == "file":
        found = sorted(globlib.glob(key, recursive=True))
        return [f"file://{p}" if pattern.startswith("file://") else p for p in found]
    literal = re.split(r"[*?\[]", key, maxsplit=1)[0]
    folder, _, stem = literal.rpartition("/")
    matcher = _glob_regex(key)
    try:
        names = _s3_filesystem().find(f"{bucket}/{folder}".rstrip("/"), prefix=stem)
    except FileNotFoundError:
        names = []
    except Exception as err:
        raise ArtifactStoreError(f"could not list {pattern}: {err}") from err
    keys = [name.partition("/")[2] for name in names]
    return [f"s3://{bucket}/{k}" for k in sorted(keys) if matcher.fullmatch(k)]


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
    data = buffer.getbuffer()  # a view: no second copy of the file in memory
    fs, path = filesystem(uri)
    if fs.protocol[0] == "s3":
        data.release()
        _put_object(fs, uri, path, buffer)
        data = buffer.getbuffer()
    else:
        write_bytes(uri, data)
    meta = {
        "uri": uri,
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": int(len(frame)),
        "schema": {str(c): str(t) for c, t in frame.dtypes.items()},
    }
    data.release()
    return meta


class TamperedArtifactError(ValueError):
    """An artifact whose content is not what was written (its sha256 was recorded at write)."""


def read_parquet(uri: str, sha256: str | None = None) -> Any:
    """Read a Parquet artifact; with `sha256` (recorded when it was written), refuse any other content."""
    import pandas as pd

    data = _read_whole(uri)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise TamperedArtifactError(
            f"{uri} has changed since it was written (sha256 {hashlib.sha256(data).hexdigest()[:12]}…, "
            f"recorded {sha256[:12]}…): refusing to use it"
        )
    import pyarrow as pa

    return pd.read_parquet(pa.BufferReader(data))  # over the buffer itself: io.BytesIO would copy a bytearray


def upload_file(path: str | Path, uri: str) -> str:
    """Move a finished local file into the store as one object (S3 multipart streams it, no full read)."""
    fs, target = filesystem(uri)
    if fs.protocol[0] == "s3":
        try:
            # boto3's managed transfer on the same connection: s3fs's put_file holds whole parts in flight (8 MiB x 4:
            # 65 MB, 1.5x the time for 200 MB on moto), s3transfer streams them from the file (30 MB).
            bucket, _, key = target.partition("/")
            _boto_client().upload_file(str(path), bucket, key)
        except Exception as err:
            raise ArtifactStoreError(f"could not write {uri}: {err}") from err
        return uri
    _replace_local(uri, target, lambda staged: shutil.copyfile(path, staged))
    return uri


def local_copy(uri: str, directory: str | Path) -> Path:
    """A local file with the object's content: the file itself for file://, a streamed download for s3://."""
    fs, path = filesystem(uri)
    if fs.protocol[0] != "s3":
        return Path(path)
    target = Path(directory) / Path(path).name
    staged = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        fs.get_file(path, str(staged), max_concurrency=1)  # one streamed GET: faster and leaner than ranged parts
        os.replace(staged, target)
    except Exception as err:
        staged.unlink(missing_ok=True)
        raise ArtifactStoreError(f"could not read {uri}: {err}") from err
    return target


def local_path(uri: str) -> Path | None:
    scheme, _, key = _split(uri)
    return Path(key) if scheme == "file" else None
