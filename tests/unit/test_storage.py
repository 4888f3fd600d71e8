"""The file:// side of the artifact store (S3 is tested elsewhere)."""

from __future__ import annotations

import hashlib
import io

import pandas as pd
import pytest

from lifecycle import storage
from lifecycle.storage import ArtifactStoreError


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("ARTIFACT_ROOT", f"file://{tmp_path}/artifacts/")
    return tmp_path / "artifacts"


def leftovers(directory):
    return sorted(p.name for p in directory.rglob(".*"))


@pytest.mark.parametrize("scheme", ["file://", ""])
def test_bytes_round_trip(tmp_path, scheme):
    uri = f"{scheme}{tmp_path}/deep/er/blob.bin"
    assert not storage.exists(uri)
    assert storage.write_bytes(uri, b"\x00payload\xff") == uri
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00payload\xff"
    assert (tmp_path / "deep" / "er" / "blob.bin").read_bytes() == b"\x00payload\xff"


def test_overwrite_replaces_whole_object(tmp_path):
    uri = f"file://{tmp_path}/blob.bin"
    storage.write_bytes(uri, b"a much longer first version")
    storage.write_bytes(uri, b"short")
    assert storage.read_bytes(uri) == b"short"


def test_json_round_trip(tmp_path):
    uri = f"file://{tmp_path}/report.json"
    payload = {"b": [1, 2.5, None], "a": {"nested": True}, "when": pd.Timestamp("2026-01-01")}
    storage.write_json(uri, payload)
    assert storage.read_json(uri) == {"a": {"nested": True}, "b": [1, 2.5, None], "when": "2026-01-01 00:00:00"}


def test_parquet_round_trip_with_hash_and_row_count(tmp_path):
    frame = pd.DataFrame({"id": [1, 2, 3], "x": [0.5, None, 2.0], "c": ["a", None, "b"]})
    uri = f"file://{tmp_path}/snap/frame.parquet"
    meta = storage.write_parquet(uri, frame)
    assert meta["uri"] == uri
    assert meta["rows"] == 3
    assert meta["schema"]["id"] == "int64" and meta["schema"]["x"] == "float64"
    assert meta["sha256"] == hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    pd.testing.assert_frame_equal(storage.read_parquet(uri), frame)
    # The hash is of the content: the same frame gives the same hash, another frame another one.
    assert storage.write_parquet(f"file://{tmp_path}/again.parquet", frame)["sha256"] == meta["sha256"]
    other = storage.write_parquet(f"file://{tmp_path}/other.parquet", frame.head(2))
    assert other["sha256"] != meta["sha256"] and other["rows"] == 2


def test_write_leaves_no_temp_files(tmp_path):
    for i in range(3):
        storage.write_bytes(f"file://{tmp_path}/out/blob.bin", b"x" * (i + 1))
    storage.write_json(f"file://{tmp_path}/out/a.json", {"k": 1})
    storage.write_parquet(f"file://{tmp_path}/out/f.parquet", pd.DataFrame({"a": [1]}))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "blob.bin", "f.parquet"]


def test_readers_never_see_a_partial_object(tmp_path, monkeypatch):
    """Atomic: the target only appears, complete, after the rename."""
    uri = f"file://{tmp_path}/blob.bin"
    seen = []
    real_replace = storage.os.replace

    def spy(src, dst):
        seen.append((storage.exists(uri), open(src, "rb").read()))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", spy)
    storage.write_bytes(uri, b"complete")
    assert seen == [(False, b"complete")]
    assert storage.read_bytes(uri) == b"complete"


def test_failed_write_leaves_no_temp_file(tmp_path):
    (tmp_path / "target").mkdir()  # the rename onto a directory fails
    with pytest.raises(ArtifactStoreError, match="target"):
        storage.write_bytes(f"file://{tmp_path}/target", b"data")
    assert leftovers(tmp_path) == []


def test_missing_file_read_names_the_uri(tmp_path):
    uri = f"file://{tmp_path}/nope.json"
    with pytest.raises(ArtifactStoreError, match="nope.json"):
        storage.read_bytes(uri)


def test_artifact_uri_layout(root):
    uri = storage.artifact_uri("demo_churn", "manual__2026-01-01T00:00:00+00:00", "raw", "snapshot.parquet")
    assert uri == f"file://{root}/demo_churn/manual__2026-01-01T00_00_00_00_00/raw/snapshot.parquet"
    # The run key is one path segment of safe characters.
    key = uri.split("/")[-3]
    assert key == storage.run_key("manual__2026-01-01T00:00:00+00:00")
    assert all(ch.isalnum() or ch in "._-" for ch in key)


def test_artifact_uri_is_writable(root):
    uri = storage.artifact_uri("demo_churn", "scheduled__2026-02-03T02:00:00+00:00", "evaluation", "d.json")
    storage.write_json(uri, {"ok": True})
    assert (root / "demo_churn" / "scheduled__2026-02-03T02_00_00_00_00" / "evaluation" / "d.json").exists()


@pytest.mark.parametrize("run_id", ["manual__x/../../etc", "a b\tc", "weird::id++"])
def test_run_key_has_no_separators(run_id):
    key = storage.run_key(run_id)
    assert "/" not in key and " " not in key and ":" not in key and "+" not in key
    assert key


@pytest.mark.parametrize("run_id", ["..", ".", "+"])
def test_run_key_is_never_a_relative_or_empty_segment(run_id):
    assert storage.run_key(run_id) not in ("", ".", "..")


@pytest.mark.parametrize("uri", ["gs://bucket/key", "http://example.com/x", "ftp://h/x"])
def test_unsupported_scheme_names_the_uri(uri):
    for call in (
        lambda: storage.write_bytes(uri, b"x"),
        lambda: storage.read_bytes(uri),
        lambda: storage.exists(uri),
    ):
        with pytest.raises(ArtifactStoreError) as info:
            call()
        assert uri in str(info.value)


def test_local_path(tmp_path):
    assert storage.local_path(f"file://{tmp_path}/a.csv") == tmp_path / "a.csv"
    assert storage.local_path(f"{tmp_path}/a.csv") == tmp_path / "a.csv"
    assert storage.local_path("s3://bucket/a.csv") is None


def test_parquet_bytes_are_readable_by_pandas(tmp_path):
    uri = f"file://{tmp_path}/f.parquet"
    storage.write_parquet(uri, pd.DataFrame({"a": [1, 2]}))
    assert pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))["a"].tolist() == [1, 2]


def test_a_uri_must_lie_under_an_allowed_prefix_by_whole_segments(tmp_path):
    allowed = [str(tmp_path / "in"), "s3://bucket/uploads/"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.parquet").write_bytes(b"")
    assert storage.require_under(str(tmp_path / "in" / "a.parquet"), allowed, "input_uri")
    assert storage.require_under(f"file://{tmp_path}/in/a.parquet", allowed, "input_uri")
    assert storage.require_under("s3://bucket/uploads/day/a.csv", allowed, "input_uri")
    for outside in (
        str(tmp_path / "inside-not.parquet"),  # a string prefix, not a folder of the allowed one
        str(tmp_path / "in" / ".." / "secret.txt"),
        "/etc/passwd",
        "s3://bucket/uploadsx/a.csv",
        "s3://other/uploads/a.csv",
    ):
        with pytest.raises(storage.OutsideAllowedPrefixError, match="input_uri .* is outside the prefixes"):
            storage.require_under(outside, allowed, "input_uri")
    with pytest.raises(storage.OutsideAllowedPrefixError, match="'..' segments"):
        storage.require_under("s3://bucket/uploads/../private/a.csv", allowed, "input_uri")


def test_a_symlink_out_of_an_allowed_folder_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link").symlink_to("/etc")
    with pytest.raises(storage.OutsideAllowedPrefixError):
        storage.require_under(str(tmp_path / "in" / "link" / "passwd"), [str(tmp_path / "in")], "input_uri")


def test_input_uri_defaults_to_the_folder_of_the_first_source(make_config):
    from lifecycle.scoring import input_prefixes

    config = make_config()
    assert input_prefixes(config) == [config.sources[0].uri.split("date={date}")[0]]
    assert input_prefixes(config)[0].endswith("/demo_churn/activity/")
    chosen = make_config(prediction={"input_prefixes": ["s3://bucket/uploads"]})
    assert input_prefixes(chosen) == ["s3://bucket/uploads"]


def test_a_parquet_artifact_is_read_only_with_the_content_it_was_written_with(tmp_path):
    uri = f"file://{tmp_path}/snapshot.parquet"
    written = storage.write_parquet(uri, pd.DataFrame({"x": [1, 2, 3]}))
    assert storage.read_parquet(uri, written["sha256"])["x"].tolist() == [1, 2, 3]
    storage.write_parquet(uri, pd.DataFrame({"x": [1, 2, 4]}))  # someone with write access to the store
    with pytest.raises(storage.TamperedArtifactError, match=f"{uri} has changed since it was written"):
        storage.read_parquet(uri, written["sha256"])
