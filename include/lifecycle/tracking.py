"""MLflow: the experiment of a pipeline, and the registry with its `champion` alias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifecycle.settings import get_settings

CHAMPION = "champion"


def mlflow_client() -> Any:
    import mlflow

    mlflow.set_tracking_uri(get_settings().mlflow_tracking_uri)
    return mlflow.MlflowClient()


def experiment_id(pipeline: str) -> str:
    """The pipeline's experiment, created on first use with artifacts under MLFLOW_ARTIFACT_ROOT locally."""
    import mlflow

    client = mlflow_client()
    name = f"lifecycle/{pipeline}"
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    settings = get_settings()
    location = None
    if settings.mlflow_tracking_uri.startswith(("sqlite:", "file:")) or "://" not in settings.mlflow_tracking_uri:
        root = settings.mlflow_artifact_root
        location = root if "://" in root else Path(root).resolve().as_uri()
        location = f"{location.rstrip('/')}/{pipeline}"
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel task
        return client.get_experiment_by_name(name).experiment_id


def champion(model_name: str) -> Any | None:
    """The model version behind the `champion` alias, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            return None
        raise


def champion_uri(model_name: str) -> str:
    return f"models:/{model_name}@{CHAMPION}"


def register_champion(model_uri: str, model_name: str, tags: dict[str, str]) -> str:
    """Register the model and move the alias to it; the old champion keeps its version for rollback."""
    import mlflow

    client = mlflow_client()
    try:
        client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(model_name, description="Registered by the lifecycle evaluation gate.")
    version = mlflow.register_model(model_uri, model_name, tags=tags)
    previous = champion(model_name)
    if previous is not None:
        client.set_model_version_tag(model_name, version.version, "previous_champion", previous.version)
    client.set_registered_model_alias(model_name, CHAMPION, version.version)
    return str(version.version)
