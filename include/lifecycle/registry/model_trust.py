"""Loading models without trusting the artifact store: a code-side type list, skops only, digests checked.

MLflow reads a model's serialisation format and skops' trusted types from the model's own MLmodel file,
so whoever can write the artifact store could make a worker unpickle anything. Here the format must be
skops, the trusted types are this list whatever the file says, the model's own `code/` is never put on
`sys.path` (the installed `lifecycle_runtime` is used), and every file must match the sha256 digests
recorded in the tracking database when the model was logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

# Types our models are made of, beyond scikit-learn's own. The `lifecycle.ml.features` names are those of
# models logged before 2026-12-03 (rollback targets among them): they stay importable and trusted.
TRUSTED_TYPES = [
    "collections.OrderedDict",
    "numpy.dtype",
    "lightgbm.basic.Booster",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.sklearn.LGBMRegressor",
    "lifecycle_runtime.v1.prepare_raw",
    "lifecycle_runtime.v1.prepared_names",
    "lifecycle.features.prepare_raw",
    "lifecycle.features._prepared_names",
    # A calibrated model (training.calibrate): CalibratedClassifierCV, FrozenEstimator and IsotonicRegression
    # are skops-trusted scikit-learn types already; these two private ones hold the fitted calibration maps.
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
]
DIGEST_TAG = "lifecycle.files_sha256"
# Where the feature code lives in this repository: shipped inside every model (MLflow `code_paths`).
RUNTIME_CODE = str(Path(__file__).resolve().parents[2] / "lifecycle_runtime")
log = logging.getLogger(__name__)


class UntrustedModelError(ValueError):
    """A model that is not what was logged, or not in the one format we load; no retry can fix it."""


def file_digests(directory: str | Path) -> dict[str, str]:
    """sha256 of every file under a model directory, by its path relative to it."""
    root = Path(directory)
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def record_digests(model_id: str, model_uri: str) -> dict[str, str]:
    """After logging: read the model back from the store and record its files' digests with the model."""
    import mlflow

    from lifecycle.registry.tracking import mlflow_client

    client = mlflow_client()
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        digests = file_digests(local)
    client.set_logged_model_tags(model_id, {DIGEST_TAG: json.dumps(digests, sort_keys=True)})
    return digests


def _model_id(client: Any, model_uri: str) -> str | None:
    """The logged model behind a `models:/` URI: by id, by name/version, or by name@alias."""
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", model_uri)
    if match:
        return match.group(1)
    match = re.fullmatch(r"models:/([^/@]+)@(.+)", model_uri)
    if match:
        return _version_model_id(client.get_model_version_by_alias(match.group(1), match.group(2)))
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri)
    if match:
        return _version_model_id(client.get_model_version(match.group(1), match.group(2)))
    return None


def _version_model_id(version: Any) -> str | None:
    """A registered version's logged model: MLflow's SQL registry leaves `model_id` empty, `source` names it."""
    if getattr(version, "model_id", None):
        return version.model_id
    match = re.fullmatch(r"models:/(m-[0-9a-f]+)", str(version.source or ""))
    return match.group(1) if match else None


def logged_model(model_uri: str) -> tuple[str | None, dict[str, str] | None]:
    """The logged model behind a URI and the digests recorded when it was logged (None, None: an older model)."""
    from lifecycle.registry.tracking import mlflow_client

    client = mlflow_client()
    model_id = _model_id(client, model_uri)
    if model_id is None:
        return None, None
    recorded = client.get_logged_model(model_id).tags.get(DIGEST_TAG)
    return model_id, (json.loads(recorded) if recorded else None)


def expected_digests(model_uri: str) -> dict[str, str] | None:
    return logged_model(model_uri)[1]


def check_digests(model_uri: str, local: str | Path, expected: dict[str, str]) -> None:
    found = file_digests(local)
    changed = sorted(name for name in expected.keys() & found.keys() if expected[name] != found[name])
    missing, added = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if changed or missing or added:
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("changed:", changed), ("missing:", missing), ("not logged:", added)) if names]  # fmt: skip
        raise UntrustedModelError(
            f"{model_uri} does not match the sha256 digests recorded when it was logged ({'; '.join(parts)}): "
            "refusing to load it"
        )


def load_local(model_uri: str, local: str | Path) -> Any:
    """Deserialise a downloaded sklearn-flavour model with skops and this module's trusted types only."""
    import skops.io
    import yaml

    local = Path(local)
    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["sklearn"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise UntrustedModelError(f"{model_uri} has no readable scikit-learn flavour in its MLmodel: {err}") from None
    if flavor.get("serialization_format") != "skops":
        raise UntrustedModelError(
            f"{model_uri} is serialised as {flavor.get('serialization_format')!r}; only skops models are loaded"
        )
    path = (local / str(flavor.get("pickled_model", ""))).resolve()
    if not path.is_file() or local.resolve() not in path.parents:
        raise UntrustedModelError(
            f"{model_uri} names a model file outside its directory: {flavor.get('pickled_model')}"
        )
    untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
    if untrusted:
        raise UntrustedModelError(f"{model_uri} contains types outside the trust list: {', '.join(untrusted)}")
    return skops.io.load(path, trusted=TRUSTED_TYPES)


def load(model_uri: str) -> Any:
    """The fitted scikit-learn pipeline behind a model URI, checked against what was logged."""
    import mlflow

    from lifecycle.registry.tracking import mlflow_client

    mlflow_client()
    model_id, expected = logged_model(model_uri)
    # From the logged model itself: a download by name/version adds files of MLflow's own (registered_model_meta).
    source = f"models:/{model_id}" if model_id else model_uri
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        if expected is None:
            log.warning("%s was logged before digests were recorded: loading it unchecked", model_uri)
        else:
            check_digests(model_uri, local, expected)
        return load_local(model_uri, local)
