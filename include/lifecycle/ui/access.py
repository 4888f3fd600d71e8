"""Who may act on one pipeline: its YAML `access` section as Airflow permissions (FAB auth manager).

    access:
      approvers: [churn_approvers]    # may answer the promotion approval of <name>__retrain
      rollbackers: [churn_operators]  # may roll the champion back on the Models page
      viewers: [analysts]             # may read the pipeline's DAGs (and so its Models page)

The names are Airflow (FAB) roles. From them:

- every DAG of the pipeline gets `access_control` (`access_control(config, kind)`): each named role may read
  the DAG and its runs; approvers and rollbackers may also edit `<name>__retrain`. The FAB auth manager
  syncs this onto the roles whenever the dag-processor writes the DAG, and revokes per-DAG permissions
  the YAML no longer names (Admin's excepted). An empty section is `None`: nothing is synced, Airflow's
  global permissions decide, as before the section existed;
- answering an approval (`PATCH .../hitlDetails`) needs `can_edit` on the DAG *and* on FAB's global
  "HITL Detail" resource, which no `access_control` can give: `role_setup_commands()` grants it to approver
  roles only (and takes it from the other named roles), so a rollbacker holding edit on the DAG cannot
  approve. Run by `docker/airflow/airflow-init.sh` (`python -m lifecycle.ui.access setup`);
- rolling back (`plugins/lifecycle_models.py`) needs edit on the DAG and, once the section names roles,
  one of the pipeline's rollbackers or Admin (`rollback_refusal`).

Light on purpose (DAG files import it at parse time): no Airflow import here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from lifecycle.config.pipeline import PipelineConfig

ADMIN_ROLE = "Admin"  # FAB's AUTH_ROLE_ADMIN default; Airflow itself never restricts it
DAG_KINDS = ("retrain", "batch_predict", "drift_check", "performance", "rollout")
# FAB's per-DAG resources (the keys access_control takes) and the actions granted on them.
DAGS, DAG_RUNS = "DAGs", "DAG Runs"
CAN_READ, CAN_EDIT = "can_read", "can_edit"
# The global resource FAB checks for HITL responses, with what approvers need on it: answering, and the
# "Required Actions" menu entry that lists what waits for them.
HITL_DETAIL = "HITL Detail"
APPROVER_ACTIONS = ("can_edit", "menu_access")


def named_roles(config: PipelineConfig) -> list[str]:
    """Every role the pipeline's `access` section names, each once, in the order first named."""
    access = config.access
    return list(dict.fromkeys([*access.approvers, *access.rollbackers, *access.viewers]))


def access_control(config: PipelineConfig, kind: str) -> dict[str, dict[str, set[str]]] | None:
    """The `access_control` of the pipeline's `<name>__<kind>` DAG; None when the section names no role."""
    if kind not in DAG_KINDS:
        raise ValueError(f"unknown DAG kind {kind!r}; known: {list(DAG_KINDS)}")
    roles = named_roles(config)
    if not roles:
        return None
    editors = set(config.access.approvers) | set(config.access.rollbackers) if kind == "retrain" else set()
    return {
        role: {DAGS: {CAN_READ, CAN_EDIT} if role in editors else {CAN_READ}, DAG_RUNS: {CAN_READ}} for role in roles
    }


def rollback_roles(config: PipelineConfig) -> tuple[str, ...] | None:
    """The roles that may roll the champion back, or None when Airflow's DAG edit permission alone decides.

    Approvers hold edit on the retrain DAG (answering needs it), so a section naming approvers but no
    rollbackers leaves rollback to Admin rather than to them.
    """
    access = config.access
    if access.rollbackers:
        return (*access.rollbackers, ADMIN_ROLE)
    if access.approvers:
        return (ADMIN_ROLE,)
    return None


def rollback_refusal(config: PipelineConfig, user: Any) -> str | None:
    """Why `user` may not roll the pipeline back, or None when the role check lets them (the caller has
    already checked edit on the retrain DAG). Only users with `.roles` (FAB) are checked: SimpleAuthManager's
    users have none, and keep the DAG edit check alone."""
    allowed = rollback_roles(config)
    held = getattr(user, "roles", None)
    if allowed is None or held is None:
        return None
    names = sorted({str(getattr(role, "name", role)) for role in held})
    if set(names) & set(allowed):
        return None
    return (
        f"rolling back {config.name} needs one of the roles {', '.join(allowed)} "
        f"(the pipeline's access.rollbackers, or Admin); you hold {', '.join(names) or 'none'}"
    )


def approver_roles(configs: Iterable[PipelineConfig]) -> list[str]:
    return sorted({role for config in configs for role in config.access.approvers})


def all_roles(configs: Iterable[PipelineConfig]) -> list[str]:
    return sorted({role for config in configs for role in named_roles(config)})


def conflicts(configs: Sequence[PipelineConfig]) -> list[str]:
    """Roles that could answer approvals of a pipeline that does not name them as approvers.

    FAB's permission to answer is global: an approver role of one pipeline that also edits another's
    retrain DAG (as its rollbacker) could approve there too.
    """
    approving = {role: [c.name for c in configs if role in c.access.approvers] for role in approver_roles(configs)}
    found = []
    for config in configs:
        for role in config.access.rollbackers:
            if approving.get(role) and role not in config.access.approvers:
                found.append(
                    f"role {role!r} approves {', '.join(approving[role])} and rolls back {config.name}: answering "
                    f"approvals is a global permission in Airflow, so it could approve {config.name}'s promotions "
                    f"too; give {config.name}'s rollbackers a role of their own"
                )
    return found


def role_setup_commands(configs: Sequence[PipelineConfig]) -> list[list[str]]:
    """The `airflow` CLI commands (arguments after `airflow`) that prepare the FAB roles the pipelines name.

    Run before the dag-processor writes DAGs naming them (it refuses a DAG whose access_control names a
    missing role). Each is idempotent.
    """
    roles, approvers = all_roles(configs), approver_roles(configs)
    others = [role for role in roles if role not in approvers]
    commands = [["roles", "create", *roles]] if roles else []
    # Resources and actions of every view (HITL Detail among them), the built-in roles' permissions, and the
    # access_control of the DAGs already in the database (the dag-processor syncs each DAG it writes too).
    commands.append(["sync-perm", "--include-dags"])
    if approvers:
        commands.append(["roles", "add-perms", *approvers, "-r", HITL_DETAIL, "-a", *APPROVER_ACTIONS])
    if others:  # a role that stopped approving stops answering
        commands.append(["roles", "del-perms", *others, "-r", HITL_DETAIL, "-a", *APPROVER_ACTIONS])
    return commands


def main(argv: list[str] | None = None) -> int:
    """`python -m lifecycle.ui.access roles|commands|setup` for the pipelines in PIPELINES_DIR."""
    import argparse
    import shlex
    import subprocess

    from lifecycle.config.pipeline import load_pipelines

    parser = argparse.ArgumentParser(prog="python -m lifecycle.ui.access", description=main.__doc__)
    parser.add_argument(
        "action",
        choices=["roles", "commands", "setup"],
        help="roles: print the roles the pipelines name; commands: print the airflow commands that prepare "
        "them; setup: run those commands",
    )
    args = parser.parse_args(argv)
    configs, errors = load_pipelines()
    for error in errors:  # the dag-processor reports these as import errors; the good files still count
        print(f"skipped: {error}", file=sys.stderr)
    if args.action == "roles":
        print("\n".join(all_roles(configs)))
        return 0
    problems = conflicts(configs)
    if problems:
        print("refusing to set up pipeline roles:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    for command in role_setup_commands(configs):
        print("airflow " + shlex.join(command), flush=True)
        if args.action == "setup":
            subprocess.run([sys.executable, "-m", "airflow", *command], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
