"""The `access` section: validated like the rest of the YAML, and turned into Airflow (FAB) permissions."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from lifecycle.config.pipeline import ConfigError, load_pipeline, load_pipelines
from lifecycle.ui import access

ROLES = {"approvers": ["churn_approvers"], "rollbackers": ["churn_operators"], "viewers": ["analysts"]}


def write(directory: Path, data: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fab_user(*roles: str) -> SimpleNamespace:
    """What the FAB auth manager hands a route: a user whose roles have names."""
    return SimpleNamespace(roles=[SimpleNamespace(name=role) for role in roles])


# ------------------------------------------------------------------------------------------ the config


def test_access_is_empty_by_default(make_config):
    config = make_config()
    assert config.access.approvers == config.access.rollbackers == config.access.viewers == []
    for kind in access.DAG_KINDS:
        assert access.access_control(config, kind) is None  # nothing synced: Airflow's global roles decide
    assert access.rollback_roles(config) is None


def test_an_access_section_loads(tmp_path, demo_dict):
    demo_dict["access"] = ROLES
    config = load_pipeline(write(tmp_path, demo_dict))
    assert config.access.approvers == ["churn_approvers"]
    assert config.access.rollbackers == ["churn_operators"]
    assert config.access.viewers == ["analysts"]


@pytest.mark.parametrize(
    ("field", "roles", "expected"),
    [
        ("approvers", [""], "non-empty"),
        ("rollbackers", ["  "], "non-empty"),
        ("viewers", [" analysts"], "leading or trailing spaces"),
        ("approvers", ["a", "b", "a"], "more than once: ['a']"),
        ("rollbackers", ["x" * 65], "longer than 64"),
        ("viewers", ["Viewer"], "built-in"),
        ("rollbackers", ["User"], "built-in"),
        ("approvers", "churn_approvers", "valid list"),
    ],
)
def test_a_bad_role_list_names_the_file_and_the_field(tmp_path, demo_dict, field, roles, expected):
    demo_dict["access"] = {field: roles}
    path = write(tmp_path, demo_dict)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field 'access.{field}" in message
    assert expected in message


def test_a_role_that_is_not_a_string_is_named_with_its_position(tmp_path, demo_dict):
    demo_dict["access"] = {"approvers": ["ok", 7]}
    path = write(tmp_path, demo_dict)
    with pytest.raises(ConfigError, match=r"field 'access\.approvers\.1': Input should be a valid string"):
        load_pipeline(path)


def test_an_unknown_access_field_is_named(tmp_path, demo_dict):
    demo_dict["access"] = {"approver": ["churn_approvers"]}
    with pytest.raises(ConfigError, match=r"field 'access\.approver': Extra inputs are not permitted"):
        load_pipeline(write(tmp_path, demo_dict))


def test_a_bad_access_section_leaves_the_other_pipelines_loading(tmp_path, demo_dict):
    write(tmp_path, demo_dict, "good.yaml")
    demo_dict["name"], demo_dict["model_name"] = "broken", "broken"
    demo_dict["access"] = {"viewers": ["analysts", "analysts"]}
    write(tmp_path, demo_dict, "broken.yaml")
    configs, errors = load_pipelines(tmp_path)
    assert [c.name for c in configs] == ["demo_churn"]
    assert len(errors) == 1 and "broken.yaml" in errors[0] and "access.viewers" in errors[0]


# --------------------------------------------------------------------------------- DAG access_control


def test_access_control_of_each_dag(make_config):
    config = make_config(access=ROLES)
    read = {"DAGs": {"can_read"}, "DAG Runs": {"can_read"}}
    edit = {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read"}}
    assert access.access_control(config, "retrain") == {
        "churn_approvers": edit,  # answering the approval needs edit on the DAG
        "churn_operators": edit,  # so does the rollback
        "analysts": read,
    }
    for kind in ("batch_predict", "drift_check"):
        assert access.access_control(config, kind) == {role: read for role in access.named_roles(config)}


def test_a_role_named_twice_gets_the_union(make_config):
    config = make_config(access={"approvers": ["team"], "viewers": ["team"]})
    assert access.access_control(config, "retrain") == {
        "team": {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read"}}
    }


def test_access_control_uses_only_what_fab_accepts_per_dag(make_config):
    from airflow.providers.fab.www.security import permissions

    config = make_config(access=ROLES)
    for kind in access.DAG_KINDS:
        for role, resources in access.access_control(config, kind).items():
            for resource, actions in resources.items():
                assert resource in permissions.RESOURCE_DETAILS_MAP, (kind, role, resource)
                assert actions <= permissions.RESOURCE_DETAILS_MAP[resource]["actions"], (kind, role, resource)
    assert access.HITL_DETAIL == permissions.RESOURCE_HITL_DETAIL
    assert {permissions.ACTION_CAN_EDIT, permissions.ACTION_CAN_ACCESS_MENU} == set(access.APPROVER_ACTIONS)


def test_an_unknown_dag_kind_is_refused(make_config):
    with pytest.raises(ValueError, match="unknown DAG kind"):
        access.access_control(make_config(access=ROLES), "retrian")


# ------------------------------------------------------------------------------------------- rollback


def test_rollbackers_and_admin_may_roll_back_and_others_are_told_who_may(make_config):
    config = make_config(access=ROLES)
    assert access.rollback_roles(config) == ("churn_operators", "Admin")
    assert access.rollback_refusal(config, fab_user("Viewer", "churn_operators")) is None
    assert access.rollback_refusal(config, fab_user("Admin")) is None
    refusal = access.rollback_refusal(config, fab_user("Viewer", "churn_approvers"))
    assert refusal is not None
    assert "churn_operators, Admin" in refusal and "you hold Viewer, churn_approvers" in refusal
    assert access.rollback_refusal(config, fab_user("User")) is not None  # edits every DAG, still refused
    assert "none" in access.rollback_refusal(config, fab_user())


def test_approvers_without_rollbackers_leave_rollback_to_admin(make_config):
    config = make_config(access={"approvers": ["churn_approvers"]})
    assert access.rollback_roles(config) == ("Admin",)
    assert access.rollback_refusal(config, fab_user("Viewer", "churn_approvers")) is not None
    assert access.rollback_refusal(config, fab_user("Admin")) is None


def test_viewers_alone_keep_the_dag_edit_check(make_config):
    assert access.rollback_roles(make_config(access={"viewers": ["analysts"]})) is None


def test_users_without_roles_keep_the_dag_edit_check(make_config):
    # SimpleAuthManager's users have one `role` string and no `roles`: Airflow's DAG edit check alone decides.
    simple_user = SimpleNamespace(username="admin", role="admin")
    assert access.rollback_refusal(make_config(access=ROLES), simple_user) is None


# --------------------------------------------------------------------------------------- role set-up


def test_role_setup_commands(make_config):
    configs = [
        make_config(access=ROLES),
        make_config(
            name="other", model_name="other", access={"approvers": ["other_approvers"], "viewers": ["analysts"]}
        ),
    ]
    assert access.role_setup_commands(configs) == [
        ["roles", "create", "analysts", "churn_approvers", "churn_operators", "other_approvers"],
        ["sync-perm", "--include-dags"],
        [
            "roles",
            "add-perms",
            "churn_approvers",
            "other_approvers",
            "-r",
            "HITL Detail",
            "-a",
            "can_edit",
            "menu_access",
        ],
        ["roles", "del-perms", "analysts", "churn_operators", "-r", "HITL Detail", "-a", "can_edit", "menu_access"],
    ]


def test_without_access_sections_only_permissions_are_synced(make_config):
    assert access.role_setup_commands([make_config()]) == [["sync-perm", "--include-dags"]]


def test_an_approver_role_that_rolls_back_another_pipeline_is_a_conflict(make_config):
    churn = make_config(access={"approvers": ["team"], "rollbackers": ["team"]})  # both on one pipeline: fine
    assert access.conflicts([churn]) == []
    other = make_config(name="other", model_name="other", access={"rollbackers": ["team"]})
    (problem,) = access.conflicts([churn, other])
    assert "'team' approves demo_churn and rolls back other" in problem


def test_the_command_line_prints_roles_and_commands_and_refuses_conflicts(tmp_path, demo_dict, monkeypatch, capsys):
    demo_dict["access"] = ROLES
    write(tmp_path, demo_dict, "churn.yaml")
    monkeypatch.setenv("PIPELINES_DIR", str(tmp_path))
    assert access.main(["roles"]) == 0
    assert capsys.readouterr().out.split() == ["analysts", "churn_approvers", "churn_operators"]
    assert access.main(["commands"]) == 0
    out = capsys.readouterr().out
    assert "airflow roles create analysts churn_approvers churn_operators\n" in out
    assert "airflow roles add-perms churn_approvers -r 'HITL Detail' -a can_edit menu_access\n" in out

    demo_dict.update(name="other", model_name="other", access={"rollbackers": ["churn_approvers"]})
    write(tmp_path, demo_dict, "other.yaml")
    assert access.main(["commands"]) == 1
    assert "churn_approvers" in capsys.readouterr().err
