"""lifecycle.persistence.storage on fsspec: the local filesystem, and S3 through s3fs on moto's HTTP server with the connection
given as AIRFLOW_CONN_AWS_DEFAULT and resolved by Airflow's own lookup."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from lifecycle.persistence import storage

BUCKET = "storage-unit"


def _moto_module():
    """tests/integration/moto_s3.py, loaded by path as tests/integration/conftest.py loads it (tests/ is no package)."""
    name = "lifecycle_tests_moto_s3"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "integration" / "moto_s3.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


s3_endpoint = _moto_module().s3_endpoint


@pytest.fixture
def local_root(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("ARTIFACT_ROOT", f"file://{tmp_path / 'store'}")
    return f"file://{tmp_path / 'store'}"


@pytest.fixture(scope="module")
def s3_root(s3_endpoint) -> str:
    """The store on moto's S3 endpoint, its keys and endpoint only in the Airflow connection's variable."""
    import airflow.sdk  # noqa: F401  (loaded: the lookup goes through Airflow's Connection.get)

    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": s3_endpoint["url"], "region_name": "us-east-1"},
    }
    with pytest.MonkeyPatch.context() as patch:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
            patch.delenv(key, raising=False)
        patch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
        patch.setenv("LIFECYCLE_S3_CONN_ID", "aws_default")
        patch.setenv("ARTIFACT_ROOT", f"s3://{BUCKET}/artifacts")
        storage.s3_client.cache_clear()
        storage.s3_client().create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}/artifacts"
        storage.s3_client.cache_clear()


ROOTS = ["local_root", "s3_root"]


@pytest.fixture(params=ROOTS)
def root(request) -> str:
    return request.getfixturevalue(request.param)


def test_the_connection_comes_through_airflows_lookup(s3_root, s3_endpoint, monkeypatch):
    from airflow.sdk import Connection

    assert "airflow.sdk" in sys.modules
    conn = Connection.get("aws_default")  # what storage asks: the same answer, endpoint in its extras
    assert storage.s3_options() == {
        "aws_access_key_id": conn.login,
        "aws_secret_access_key": conn.password,
        "endpoint_url": s3_endpoint["url"],
        "region_name": "us-east-1",
    }
    # Airflow's URI form of the same connection, under another id the settings name.
    uri = f"aws://key2:secret%2F2@/?endpoint_url={s3_endpoint['url'].replace(':', '%3A')}&region_name=eu-west-1"
    monkeypatch.setenv("AIRFLOW_CONN_OTHER_S3", uri)
    monkeypatch.setenv("LIFECYCLE_S3_CONN_ID", "other_s3")
    assert storage.s3_options() == {
        "aws_access_key_id": "key2",
        "aws_secret_access_key": "secret/2",
        "endpoint_url": s3_endpoint["url"],
        "region_name": "eu-west-1",
    }
    monkeypatch.setenv("LIFECYCLE_S3_CONN_ID", "not_defined_anywhere")
    assert storage.s3_options() == {}, "no connection: botocore's own chain"


def test_without_airflow_the_same_variable_is_read_the_same_way(s3_root, monkeypatch):
    via_airflow = storage._airflow_connection("aws_default")
    assert storage._connection_from_env("aws_default") == via_airflow
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN", "{not json")
    with pytest.raises(storage.ArtifactStoreError, match="AIRFLOW_CONN_BROKEN"):
        storage._connection_from_env("broken")


def test_bytes_and_json_round_trip_and_overwrite_whole(root):
    uri = storage.artifact_uri("p", "manual__2026-01-01T00:00:00+00:00", "raw", "a.json")
    assert uri.startswith(root + "/p/manual__2026-01-01T00_00_00_00_00/")
    assert not storage.exists(uri)
    storage.write_json(uri, {"b": 1, "a": [1, 2]})
    assert storage.exists(uri) and storage.read_json(uri) == {"a": [1, 2], "b": 1}
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"


def test_a_folder_is_not_an_object_on_s3(s3_root):
    storage.write_bytes(f"{s3_root}/folder/x.bin", b"x")
    assert not storage.exists(f"{s3_root}/folder"), "a prefix is not an object (as with head_object before)"


def test_parquet_keeps_its_hash_and_refuses_tampering(root):
    frame = pd.DataFrame({"id": range(1000), "v": [i / 3 for i in range(1000)], "c": ["a", "b"] * 500})
    meta = storage.write_parquet(f"{root}/t/snap.parquet", frame)
    assert meta["rows"] == 1000 and meta["schema"]["id"] == "int64"
    assert meta["sha256"] == hashlib.sha256(storage.read_bytes(meta["uri"])).hexdigest()
    pd.testing.assert_frame_equal(storage.read_parquet(meta["uri"], meta["sha256"]), frame)
    storage.write_parquet(meta["uri"], frame.head(10))  # the same object, other content
    with pytest.raises(storage.TamperedArtifactError, match="changed since it was written"):
        storage.read_parquet(meta["uri"], meta["sha256"])


def test_glob_matches_like_the_shell(root):
    for name in ("d/2026-01-01/a.parquet", "d/2026-01-02/b.parquet", "d/2026-01-02/c.csv", "d/x/y/z.parquet"):
        storage.write_bytes(f"{root}/{name}", b"1")
    assert storage.glob(f"{root}/d/2026-01-0?/*.parquet") == [
        f"{root}/d/2026-01-01/a.parquet",
        f"{root}/d/2026-01-02/b.parquet",
    ]
    assert storage.glob(f"{root}/d/*.parquet") == [], "* stays within one segment"
    assert f"{root}/d/x/y/z.parquet" in storage.glob(f"{root}/d/**/*.parquet")
    assert storage.glob(f"{root}/d/2026-01-02/[!b]*") == [f"{root}/d/2026-01-02/c.csv"]
    assert storage.glob(f"{root}/nothing/*") == []


def test_local_writes_leave_no_staged_file_and_glob_skips_one_in_flight(local_root):
    folder = Path(local_root.removeprefix("file://")) / "w"
    storage.write_bytes(f"{local_root}/w/a.bin", b"a")
    assert [p.name for p in folder.iterdir()] == ["a.bin"]
    (folder / ".b.bin.123.partial").write_bytes(b"half")  # another writer, mid-write
    assert storage.glob(f"{local_root}/w/*") == [f"{local_root}/w/a.bin"]


def test_upload_and_local_copy_stream_files(root, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: a multipart upload on S3
    uri = storage.upload_file(source, f"{root}/u/big.bin")
    (tmp_path / "down").mkdir()
    copy = storage.local_copy(uri, tmp_path / "down")
    assert copy.read_bytes() == source.read_bytes()
    assert storage.local_path(uri) == (copy if root.startswith("file://") else None)
    assert [p.name for p in (tmp_path / "down").iterdir()] == ([] if root.startswith("file://") else ["big.bin"])


def test_missing_objects_are_errors_that_name_the_uri(root, tmp_path):
    with pytest.raises(storage.ArtifactStoreError, match=f"could not read {root}/missing.json"):
        storage.read_json(f"{root}/missing.json")
    with pytest.raises(storage.ArtifactStoreError, match="could not read"):
        storage.read_parquet(f"{root}/missing.parquet")
    if root.startswith("s3://"):
        with pytest.raises(storage.ArtifactStoreError, match="could not read"):
            storage.local_copy(f"{root}/missing.bin", tmp_path)
        assert list(tmp_path.iterdir()) == [], "no partial download left behind"


def test_an_unreachable_endpoint_is_an_error_not_a_no(s3_root, monkeypatch):
    dead = {"conn_type": "aws", "login": "x", "password": "y", "extra": {"endpoint_url": "http://127.0.0.1:9"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(dead))
    monkeypatch.setattr(storage, "_S3_CONFIG", {**storage._S3_CONFIG, "retries": {"max_attempts": 1}})
    with pytest.raises(storage.ArtifactStoreError, match=f"could not check {s3_root}/a.json"):
        storage.exists(f"{s3_root}/a.json")
    with pytest.raises(storage.ArtifactStoreError, match=f"could not write {s3_root}/a.json"):
        storage.write_json(f"{s3_root}/a.json", {})
    with pytest.raises(storage.ArtifactStoreError, match="could not list"):
        storage.glob(f"{s3_root}/*.json")


def test_unsupported_schemes_and_escapes_are_refused():
    with pytest.raises(storage.ArtifactStoreError, match="unsupported artifact URI scheme 'gs'"):
        storage.read_bytes("gs://bucket/key")
    with pytest.raises(storage.OutsideAllowedPrefixError):
        storage.require_under("s3://b/data/../secret", ["s3://b/data"], "input_uri")
    assert storage.require_under("s3://b/data/x.csv", ["s3://b/data/"], "input_uri") == "s3://b/data/x.csv"
