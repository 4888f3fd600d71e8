"""The parse cache of `load_pipelines` (issue 12): it only ever saves time, never changes what is loaded."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest
import yaml

from lifecycle.config import pipeline as config_module
from lifecycle.config.pipeline import ConfigError, load_pipeline, load_pipelines, parse_cache_file

REPO = Path(__file__).resolve().parents[2]
DEMO = (REPO / "include" / "pipelines" / "demo_churn.yaml").read_text()


def _pipeline(name: str) -> str:
    return DEMO.replace("\nname: demo_churn\n", f"\nname: {name}\n")


@pytest.fixture
def pipes(tmp_path, monkeypatch) -> Path:
    """Three good pipelines, with the cache in a folder of the test's own."""
    monkeypatch.setenv("LIFECYCLE_PARSE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for name in ("alpha", "beta", "gamma"):
        (folder / f"{name}.yaml").write_text(_pipeline(name))
    return folder


@pytest.fixture
def parsed(monkeypatch) -> list[str]:
    """The names of the files whose YAML was parsed (not taken from the cache)."""
    seen: list[str] = []
    real = config_module._parse

    def counting(path: Path, text: str):
        seen.append(path.name)
        return real(path, text)

    monkeypatch.setattr(config_module, "_parse", counting)
    return seen


def _uncached(folder: Path, monkeypatch) -> tuple[list, list[str]]:
    with monkeypatch.context() as m:
        m.setenv("LIFECYCLE_PARSE_CACHE", "")
        return load_pipelines(folder)


def test_the_second_load_parses_no_yaml_and_gives_the_same_configs(pipes, parsed, monkeypatch):
    first, errors = load_pipelines(pipes)
    assert errors == [] and parsed == ["alpha.yaml", "beta.yaml", "gamma.yaml"]
    inode = parse_cache_file(pipes).stat().st_ino
    parsed.clear()
    second, errors = load_pipelines(pipes)
    assert errors == [] and parsed == []
    assert parse_cache_file(pipes).stat().st_ino == inode  # nothing new: not rewritten
    assert second == first == _uncached(pipes, monkeypatch)[0]
    assert [c.model_dump() for c in second] == [c.model_dump() for c in first]


def test_a_changed_yaml_is_parsed_again_and_the_change_is_seen(pipes, parsed):
    load_pipelines(pipes)
    parsed.clear()
    (pipes / "beta.yaml").write_text(_pipeline("beta").replace("min_rows: 500", "min_rows: 750"))
    configs, errors = load_pipelines(pipes)
    assert errors == [] and parsed == ["beta.yaml"]
    assert {c.name: c.validation.min_rows for c in configs} == {"alpha": 500, "beta": 750, "gamma": 500}


def test_an_environment_change_is_a_text_change(pipes, parsed, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "one"))
    load_pipelines(pipes)
    parsed.clear()
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "two"))
    configs, _ = load_pipelines(pipes)
    assert len(parsed) == 3
    assert configs[0].sources[0].uri.startswith(str(tmp_path / "two"))


BAD = {
    "syntax": lambda text: text.replace("task: binary", "task: [binary"),
    "field": lambda text: text.replace("primary_metric: roc_auc", "primary_metric: auc"),
    "not-a-mapping": lambda _text: "- just\n- a list\n",
    "env": lambda text: text.replace("${DATA_ROOT}", "${NOT_SET_ANYWHERE_12}", 1),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_file_gives_the_same_error_with_and_without_the_cache_and_is_never_cached(
    kind, pipes, parsed, monkeypatch
):
    monkeypatch.delenv("NOT_SET_ANYWHERE_12", raising=False)
    (pipes / "broken.yaml").write_text(BAD[kind](_pipeline("broken")))
    (pipes / "twin.yaml").write_text(_pipeline("alpha"))  # the cross-file check: a second 'alpha'
    plain = _uncached(pipes, monkeypatch)
    first = load_pipelines(pipes)
    parsed.clear()
    second = load_pipelines(pipes)
    assert plain[1] == first[1] == second[1]
    assert [c.name for c in plain[0]] == [c.name for c in second[0]] == ["beta", "gamma"]
    assert any(e.startswith(f"{pipes / 'broken.yaml'}:") for e in second[1])
    assert any("pipeline name 'alpha' is used by more than one file" in e for e in second[1])
    assert "broken.yaml" in parsed or kind == "env"  # never served from the cache
    # Cached: the files that validated on their own (twin.yaml is alpha.yaml's text: one entry for both).
    assert len(json.loads(parse_cache_file(pipes).read_text())["entries"]) == 3


def test_a_yaml_syntax_error_reads_as_the_pure_python_loader_words_it(tmp_path):
    """libyaml words errors differently (no snippet of the line): a file it refuses is read again in Python."""
    path = tmp_path / "broken.yaml"
    path.write_text(_pipeline("broken").replace("task: binary", "task: [binary"))
    text = config_module.expand_env(path.read_text())
    with pytest.raises(yaml.YAMLError) as expected:
        yaml.safe_load(text)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    assert str(caught.value) == f"{path}: {expected.value}"
    assert "task: [binary" in str(caught.value)  # the pure-Python loader's snippet
    assert type(caught.value.__cause__) is type(expected.value)


CORRUPT = {
    "garbage": b"\x00\xffnot json at all",
    "truncated": b'{"code": "abc", "entries": {',
    "a list": b"[1, 2, 3]",
    "entries not a mapping": None,  # filled in with the right code version below
    "another code version": None,
    "tampered entries": None,
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(kind, pipes, parsed, monkeypatch):
    expected = _uncached(pipes, monkeypatch)
    load_pipelines(pipes)
    file = parse_cache_file(pipes)
    good = json.loads(file.read_text())
    content = CORRUPT[kind]
    if kind == "entries not a mapping":
        content = json.dumps({**good, "entries": ["x"]}).encode()
    elif kind == "another code version":
        content = json.dumps({**good, "code": "0" * 64}).encode()
    elif kind == "tampered entries":  # still readable, but no longer a valid pipeline: the YAML decides
        content = json.dumps({**good, "entries": {k: {"name": "Bad Name"} for k in good["entries"]}}).encode()
    file.write_bytes(content)
    parsed.clear()
    assert load_pipelines(pipes) == expected
    assert len(parsed) == 3
    assert json.loads(file.read_text()) == good  # rewritten from the files themselves


def test_a_cache_file_others_may_write_is_ignored(pipes, parsed):
    load_pipelines(pipes)
    file = parse_cache_file(pipes)
    file.chmod(0o666)
    parsed.clear()
    load_pipelines(pipes)
    assert len(parsed) == 3


def test_a_cache_folder_that_cannot_be_written_only_costs_speed(pipes, parsed, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LIFECYCLE_PARSE_CACHE", str(blocker / "cache"))
    assert [c.name for c in load_pipelines(pipes)[0]] == ["alpha", "beta", "gamma"]
    assert [c.name for c in load_pipelines(pipes)[0]] == ["alpha", "beta", "gamma"]
    assert len(parsed) == 6


def test_the_cache_is_off_outside_airflow_unless_asked_for(monkeypatch, tmp_path):
    monkeypatch.delenv("LIFECYCLE_PARSE_CACHE", raising=False)
    monkeypatch.delenv("AIRFLOW_HOME", raising=False)
    assert parse_cache_file(tmp_path) is None
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert parse_cache_file(tmp_path).parent == tmp_path / "home" / "cache" / "lifecycle"
    monkeypatch.setenv("LIFECYCLE_PARSE_CACHE", "")
    assert parse_cache_file(tmp_path) is None


def test_data_json_cannot_hold_exactly_is_parsed_every_time_and_loads_as_before(pipes, parsed):
    """A YAML date or a NaN does not come back from JSON unchanged: such a file is never cached."""
    text = _pipeline("gamma").replace("n_estimators: [100, 200]", "n_estimators: [100, .nan]")
    (pipes / "gamma.yaml").write_text(text.replace("min_child_samples: [20, 50]", "min_child_samples: [2026-01-01]"))
    load_pipelines(pipes)
    inode = parse_cache_file(pipes).stat().st_ino
    parsed.clear()
    configs, errors = load_pipelines(pipes)
    assert errors == [] and parsed == ["gamma.yaml"]
    assert parse_cache_file(pipes).stat().st_ino == inode  # the other two were cached: nothing to rewrite
    grid = configs[2].training.grid
    assert math.isnan(grid["n_estimators"][1]) and grid["min_child_samples"] == [dt.date(2026, 1, 1)]
