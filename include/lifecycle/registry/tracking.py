"""MLflow: the experiment of a pipeline, and the registry with its `champion` alias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lifecycle.config.settings import get_settings

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


def champion(model_name: str, alias: str = CHAMPION) -> Any | None:
    """The model version behind the `champion` alias (or another), or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            return None
        raise


def champion_uri(model_name: str) -> str:
    return f"models:/{model_name}@{CHAMPION}"


class ChampionMovedError(RuntimeError):
    """The champion changed between the gate's decision and the alias move: the decision is stale."""


def version_for_run(model_name: str, run_id: str, model_uri: str) -> Any | None:
    """The version already registered from this run's model, if a previous attempt got that far."""
    client = mlflow_client()
    for version in client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'"):
        if version.source == model_uri or (version.tags or {}).get("lifecycle.model_uri") == model_uri:
            return version
    return None


def _registered_version(model_uri: str, model_name: str, tags: dict[str, str], run_id: str) -> str:
    """The version of this run's model: found when an earlier attempt registered it, else registered now."""
    import mlflow

    client = mlflow_client()
    try:
        client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException:
        try:
            client.create_registered_model(model_name, description="Registered by the lifecycle evaluation gate.")
        except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel task
            client.get_registered_model(model_name)
    version = version_for_run(model_name, run_id, model_uri)
    if version is None:
        version = mlflow.register_model(model_uri, model_name, tags={**tags, "lifecycle.model_uri": model_uri})
    return str(version.version)


def start_canary(
    model_uri: str,
    model_name: str,
    tags: dict[str, str],
    run_id: str,
    alias: str,
    *,
    engine: Any,
    moved_by: str,
    reason: str = "",
    airflow_run_id: str | None = None,
) -> str:
    """Register the model once and point the challenger `alias` at it: serving routes a share of traffic there.

    The champion does not move. Retried, it finds its version and leaves one alias move in the history.
    """
    from lifecycle.registry import registry_history

    number = _registered_version(model_uri, model_name, tags, run_id)
    with registry_history.alias_lock(engine, model_name, alias) as conn:
        current = champion(model_name, alias)
        previous = str(current.version) if current is not None else None
        if previous != number:
            mlflow_client().set_registered_model_alias(model_name, alias, number)
        if registry_history.last_version(conn, model_name, alias) != number:
            registry_history.record(
                conn, model_name, number, previous=previous, moved_by=moved_by, how="gate", reason=reason,
                airflow_run_id=airflow_run_id, mlflow_run_id=run_id, alias=alias,
            )  # fmt: skip
    return number


def register_champion(
    model_uri: str,
    model_name: str,
    tags: dict[str, str],
    run_id: str,
    expected_champion: str | None,
    *,
    engine: Any,
    moved_by: str,
    reason: str = "",
    airflow_run_id: str | None = None,
    at: Any = None,
) -> str:
    """Register the model once and move the alias only if the champion is still the one the gate judged against.

    Safe under Airflow's retries: a second attempt finds the version the first one registered (find before
    create), and one whose alias move already happened returns that version (recording the move if the
    first attempt died before it could). If someone or something moved the champion since the decision
    (a rollback during an approval wait, another retrain), nothing is moved and the error names both
    versions. The check and the move happen under the alias's database lock (`registry_history`), so two
    racing promotions cannot both pass the check.
    """
    from lifecycle.registry import registry_history

    client = mlflow_client()
    number = _registered_version(model_uri, model_name, tags, run_id)
    with registry_history.alias_lock(engine, model_name) as conn:
        current = champion(model_name)
        current_number = str(current.version) if current is not None else None
        if current_number == number:  # a retry after the move: make sure the history has it
            if registry_history.last_version(conn, model_name) != number:
                registry_history.record(
                    conn, model_name, number, previous=registry_history.last_version(conn, model_name),
                    moved_by=moved_by, how="gate", reason=reason, airflow_run_id=airflow_run_id, mlflow_run_id=run_id,
                    at=at,
                )  # fmt: skip
            return number
        registry_history.observe(conn, model_name, current_number)
        expected = str(expected_champion) if expected_champion is not None else None
        if current_number != expected:
            raise ChampionMovedError(
                f"models:/{model_name}@{CHAMPION} is version {current_number}, but the gate compared against "
                f"{'no champion' if expected is None else f'version {expected}'}: version {number} is registered "
                "and not promoted; run the retrain again to decide against the current champion"
            )
        if current_number is not None:
            client.set_model_version_tag(model_name, number, "previous_champion", current_number)
        client.set_registered_model_alias(model_name, CHAMPION, number)
        registry_history.record(
            conn, model_name, number, previous=current_number, moved_by=moved_by, how="gate", reason=reason,
            airflow_run_id=airflow_run_id, mlflow_run_id=run_id, at=at,
        )  # fmt: skip
    return number


# The version a history row gives an alias that was removed (the history's version column is never empty).
ALIAS_REMOVED = ""


def rollout_challenger(model_name: str, challenger: int | str | None) -> str | None:
    """The version `serving.rollout.challenger` names now: a version number that exists, or an alias that is set."""
    from mlflow.exceptions import MlflowException

    if challenger is None:
        return None
    if isinstance(challenger, str):
        found = champion(model_name, challenger)
        return str(found.version) if found is not None else None
    try:
        return str(mlflow_client().get_model_version(model_name, str(challenger)).version)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            return None
        raise


def promote_version(
    model_name: str,
    version: str,
    expected_champion: str | None,
    *,
    engine: Any,
    moved_by: str,
    how: str,
    reason: str = "",
    airflow_run_id: str | None = None,
) -> bool:
    """Move `champion` to an already registered version if it is still `expected_champion`; True if moved now.

    The compare-and-set of `register_champion` for a version that exists (a canary's challenger): under the
    alias lock, a champion that is already `version` is a retry (the history gets the move if it missed it,
    nothing else happens, False); one that is neither is a stale decision (ChampionMovedError, nothing moved).
    """
    from lifecycle.registry import registry_history

    version = str(version)
    with registry_history.alias_lock(engine, model_name) as conn:
        current = champion(model_name)
        current_number = str(current.version) if current is not None else None
        if current_number == version:
            if registry_history.last_version(conn, model_name) != version:
                registry_history.record(
                    conn, model_name, version, previous=registry_history.last_version(conn, model_name),
                    moved_by=moved_by, how=how, reason=reason, airflow_run_id=airflow_run_id,
                )  # fmt: skip
            return False
        registry_history.observe(conn, model_name, current_number)
        expected = str(expected_champion) if expected_champion is not None else None
        stale = current_number != expected
        if not stale:
            client = mlflow_client()
            if current_number is not None:
                client.set_model_version_tag(model_name, version, "previous_champion", current_number)
            client.set_registered_model_alias(model_name, CHAMPION, version)
            registry_history.record(
                conn, model_name, version, previous=current_number, moved_by=moved_by, how=how, reason=reason,
                airflow_run_id=airflow_run_id,
            )  # fmt: skip
    if stale:  # raised after the commit, so the history keeps the move it observed
        raise ChampionMovedError(
            f"models:/{model_name}@{CHAMPION} is version {current_number}, but the decision compared version "
            f"{version} against {'no champion' if expected is None else f'version {expected}'}: nothing moved; "
            "the next decision compares against the current champion"
        )
    return True


def remove_alias(
    model_name: str,
    alias: str,
    version: str,
    *,
    engine: Any,
    moved_by: str,
    how: str,
    reason: str = "",
    airflow_run_id: str | None = None,
) -> bool:
    """Delete `alias` if it still points at `version`, and record the removal once; True if it was deleted now.

    An alias already gone is a retry (the removal is recorded if the first attempt died before it could); one
    moved to another version meanwhile (a new test started) is left alone and nothing is recorded.
    """
    from lifecycle.registry import registry_history

    if alias == CHAMPION:
        raise ValueError("the champion alias is moved, never removed")
    version = str(version)
    with registry_history.alias_lock(engine, model_name, alias) as conn:
        current = champion(model_name, alias)
        current_number = str(current.version) if current is not None else None
        if current_number is not None and current_number != version:
            return False
        registry_history.observe(conn, model_name, current_number, alias)
        if current_number == version:
            mlflow_client().delete_registered_model_alias(model_name, alias)
        if registry_history.last_version(conn, model_name, alias) != ALIAS_REMOVED:
            registry_history.record(
                conn, model_name, ALIAS_REMOVED, previous=version, moved_by=moved_by, how=how, reason=reason,
                airflow_run_id=airflow_run_id, alias=alias,
            )  # fmt: skip
    return current_number == version
