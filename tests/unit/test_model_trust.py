"""Models are loaded only as logged: skops with the code-side trust list, every file matching its digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from lifecycle.registry import model_trust, tracking
from lifecycle_runtime.v1 import prepare_raw, prepared_names

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def store(mlflow_store):
    return mlflow_store


def _model() -> Pipeline:
    frame = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]})
    prepare = FunctionTransformer(
        prepare_raw, kw_args={"categorical": [], "derived": {"x2": "x * x"}}, feature_names_out=prepared_names
    )
    return Pipeline([("prepare", prepare), ("model", LogisticRegression())]).fit(frame, [0, 0, 0, 1, 1, 1])


def _logged(experiment: str, name: str = "model", **kwargs) -> tuple[str, str]:
    """A model logged as retrain logs it, digests recorded: (model URI, local artifact directory)."""
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            _model(), name=name, serialization_format="skops", skops_trusted_types=model_trust.TRUSTED_TYPES,
            code_paths=[model_trust.RUNTIME_CODE], pip_requirements=["scikit-learn"], **kwargs,
        )  # fmt: skip
    model_trust.record_digests(info.model_id, info.model_uri)
    local = mlflow.artifacts.download_artifacts(info.model_uri)  # a local store: find the stored files
    stored = Path(tracking.mlflow_client().get_logged_model(info.model_id).artifact_location.removeprefix("file://"))
    assert stored.is_dir() and Path(local).is_dir()
    return info.model_uri, str(stored)


def test_a_logged_model_loads_and_ships_its_feature_code(store):
    _, experiment = store
    uri, stored = _logged(experiment)
    model = model_trust.load(uri)
    assert model.predict_proba(pd.DataFrame({"x": [0.0, 5.0]}))[:, 1].round(2).tolist() == pytest.approx(
        _model().predict_proba(pd.DataFrame({"x": [0.0, 5.0]}))[:, 1].round(2).tolist()
    )
    assert (Path(stored) / "code" / "lifecycle_runtime" / "v1.py").is_file()


def test_a_tampered_model_file_is_refused_with_the_uri_named(store):
    _, experiment = store
    uri, stored = _logged(experiment)
    skops_file = Path(stored) / "model.skops"
    skops_file.write_bytes(skops_file.read_bytes() + b"\0")
    with pytest.raises(model_trust.UntrustedModelError) as info:
        model_trust.load(uri)
    assert uri in str(info.value) and "changed: model.skops" in str(info.value)


def test_a_tampered_registered_version_is_refused_by_name_version_and_alias(store):
    """Batch prediction loads `models:/<name>/<version>`: the digests must be found through the registry too."""
    client, experiment = store
    uri, stored = _logged(experiment)
    version = mlflow.register_model(uri, "trusted_registered")
    client.set_registered_model_alias("trusted_registered", "champion", version.version)
    for by in (f"models:/trusted_registered/{version.version}", "models:/trusted_registered@champion"):
        assert model_trust.expected_digests(by) is not None, by
        model_trust.load(by)
    skops_file = Path(stored) / "model.skops"
    skops_file.write_bytes(skops_file.read_bytes() + b"\0")
    for by in (f"models:/trusted_registered/{version.version}", "models:/trusted_registered@champion"):
        with pytest.raises(model_trust.UntrustedModelError, match="changed: model.skops"):
            model_trust.load(by)


def test_shipped_code_that_was_edited_is_refused(store):
    _, experiment = store
    uri, stored = _logged(experiment)
    code = Path(stored) / "code" / "lifecycle_runtime" / "v1.py"
    code.write_text(code.read_text() + "\nimport os  # injected\n")
    with pytest.raises(model_trust.UntrustedModelError, match="changed: code/lifecycle_runtime/v1.py"):
        model_trust.load(uri)


def test_a_pickle_swapped_in_through_the_mlmodel_file_is_refused(store, tmp_path):
    """Even where no digest was recorded, the MLmodel file cannot choose pickle or widen the trust list."""
    _, experiment = store
    _, stored = _logged(experiment)
    local = tmp_path / "model"
    shutil.copytree(stored, local)
    mlmodel = local / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("serialization_format: skops", "serialization_format: cloudpickle"))
    with pytest.raises(model_trust.UntrustedModelError, match="serialised as 'cloudpickle'; only skops"):
        model_trust.load_local("models:/m-local", local)


def test_the_trust_list_is_the_codes_not_the_files(store, tmp_path):
    """A model whose MLmodel trusts `os.system` is still loaded with our list, so skops refuses the type."""
    import skops.io

    local = tmp_path / "model"
    (local).mkdir()
    skops.io.dump({"call": np.asarray}, local / "model.skops")  # a type outside our list
    (local / "MLmodel").write_text(
        "flavors:\n  sklearn:\n    pickled_model: model.skops\n    serialization_format: skops\n"
        "    skops_trusted_types: [numpy.asarray]\n"
    )
    with pytest.raises(model_trust.UntrustedModelError, match="types outside the trust list: numpy"):
        model_trust.load_local("models:/m-crafted", local)


def test_a_model_file_outside_its_directory_is_refused(tmp_path):
    local = tmp_path / "model"
    local.mkdir()
    (tmp_path / "elsewhere.skops").write_bytes(b"")
    (local / "MLmodel").write_text(
        "flavors:\n  sklearn:\n    pickled_model: ../elsewhere.skops\n    serialization_format: skops\n"
    )
    with pytest.raises(model_trust.UntrustedModelError, match="outside its directory"):
        model_trust.load_local("models:/m-escape", local)


def test_a_model_logged_by_the_earlier_layout_still_loads_and_scores_the_same():
    """Logged on 2026-12-02 when the feature code was `lifecycle.features.prepare_raw` (see its README)."""
    fixture = FIXTURES / "model_layout_2026_12_02"
    assert "lifecycle.features.prepare_raw" in (fixture / "model" / "MLmodel").read_text()
    model = model_trust.load_local("fixture", fixture / "model")
    rows = pd.DataFrame(json.loads((fixture / "rows.json").read_text()))
    expected = json.loads((fixture / "scores.json").read_text())
    assert model.predict_proba(rows)[:, 1] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_a_calibrated_model_loads_with_exactly_the_calibration_types_added(store, method, monkeypatch):
    """training.calibrate wraps the pipeline in CalibratedClassifierCV(FrozenEstimator(...)); it loads checked."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    _, experiment = store
    rows = pd.DataFrame({"x": np.linspace(0.0, 5.0, 40)})
    labels = (np.arange(40) % 3 == 0) | (rows["x"] > 3.5)
    calibrated = CalibratedClassifierCV(FrozenEstimator(_model()), method=method).fit(rows, labels.astype(int))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.sklearn.log_model(
            calibrated, name="calibrated", serialization_format="skops", skops_trusted_types=model_trust.TRUSTED_TYPES,
            code_paths=[model_trust.RUNTIME_CODE], pip_requirements=["scikit-learn"],
        )  # fmt: skip
    model_trust.record_digests(info.model_id, info.model_uri)
    loaded = model_trust.load(info.model_uri)
    assert isinstance(loaded, CalibratedClassifierCV) and list(loaded.classes_) == [0, 1]
    np.testing.assert_allclose(loaded.predict_proba(rows), calibrated.predict_proba(rows))
    # Each added type is needed: without the private calibration types the model is refused, naming them.
    added = {"sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"}
    monkeypatch.setattr(model_trust, "TRUSTED_TYPES", [t for t in model_trust.TRUSTED_TYPES if t not in added])
    with pytest.raises(model_trust.UntrustedModelError, match="sklearn.calibration._CalibratedClassifier"):
        model_trust.load(info.model_uri)
