#!/usr/bin/env bash
# Entrypoint of the mlflow image (docker-compose.yml's `mlflow` service): renders the config of MLflow's
# basic-auth app from the environment, then execs the command (`mlflow server --app-name=basic-auth ...`).
#
# The auth app reads an ini file (MLFLOW_AUTH_CONFIG_PATH) and an ini file cannot read environment
# variables, so it is written here at every start from:
#   MLFLOW_AUTH_CONFIG_PATH         where to write it (the image sets /home/mlflow/auth/basic_auth.ini)
#   MLFLOW_AUTH_DATABASE_URI        the users and permissions database (SQLAlchemy URL)
#   MLFLOW_AUTH_ADMIN_USERNAME      the admin account created on the first start (empty user store)
#   MLFLOW_AUTH_ADMIN_PASSWORD      its password; required, 12+ characters, not a placeholder
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what a user gets on resources nobody granted them: READ (the default)
#                                   or NO_PERMISSIONS; anything that could write is refused
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the auth app's sessions and CSRF tokens (read by MLflow itself)
# Every refusal names the variable and exits before the server starts.
#
# The admin password only matters while the admin user does not exist yet: MLflow ignores it once the
# account is in the database. Change it through the API (see README.md), then in .env.
set -euo pipefail

fail() {
  echo "mlflow-entrypoint: $*" >&2
  exit 78 # EX_CONFIG
}

require() {
  local name="$1"
  [[ -n "${!name:-}" ]] || fail "${name} is not set or empty: set it in .env (see .env.example)."
  # One value per ini line: a line break would smuggle in settings of its own.
  [[ "${!name}" != *$'\n'* && "${!name}" != *$'\r'* ]] || fail "${name} contains a line break."
}

# Values that only look like a secret: .env.example's placeholders and MLflow's old shipped default.
is_placeholder() {
  local value="${1,,}"
  case "$value" in
    "<"*">" | changeme | change-me | change_me | password | password1234 | secret) return 0 ;;
    *) return 1 ;;
  esac
}

for name in MLFLOW_AUTH_CONFIG_PATH MLFLOW_AUTH_DATABASE_URI MLFLOW_AUTH_ADMIN_USERNAME \
  MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
  require "$name"
done
for name in MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
  if is_placeholder "${!name}"; then
    fail "${name} is still a placeholder: set it in .env to a secret of your own (openssl rand -hex 32)."
  fi
done
if ((${#MLFLOW_AUTH_ADMIN_PASSWORD} < 12)); then
  fail "MLFLOW_AUTH_ADMIN_PASSWORD is shorter than the 12 characters MLflow requires."
fi

: "${MLFLOW_AUTH_DEFAULT_PERMISSION:=READ}"
case "$MLFLOW_AUTH_DEFAULT_PERMISSION" in
  READ | NO_PERMISSIONS) ;;
  *) fail "MLFLOW_AUTH_DEFAULT_PERMISSION=${MLFLOW_AUTH_DEFAULT_PERMISSION}: use READ or NO_PERMISSIONS." ;;
esac

(($# > 0)) || fail "no command given (e.g. mlflow server --app-name=basic-auth)."

# configparser interpolates %(name)s, so a literal % (URL-encoded passwords) is written as %%.
ini_value() { printf '%s' "${1//%/%%}"; }

config="$MLFLOW_AUTH_CONFIG_PATH"
umask 077 # the file holds the database password and the admin password
mkdir -p -- "$(dirname -- "$config")"
partial="$(mktemp "${config}.XXXXXX")"
trap 'rm -f -- "$partial"' EXIT
{
  echo "# Written by docker/mlflow/entrypoint.sh at container start; edits are overwritten."
  echo "[mlflow]"
  echo "default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION}"
  echo "database_uri = $(ini_value "$MLFLOW_AUTH_DATABASE_URI")"
  echo "admin_username = $(ini_value "$MLFLOW_AUTH_ADMIN_USERNAME")"
  echo "admin_password = $(ini_value "$MLFLOW_AUTH_ADMIN_PASSWORD")"
  echo "authorization_function = mlflow.server.auth:authenticate_request_basic_auth"
} >"$partial"
mv -f -- "$partial" "$config"
trap - EXIT
export MLFLOW_AUTH_CONFIG_PATH MLFLOW_FLASK_SERVER_SECRET_KEY

echo "mlflow-entrypoint: wrote ${config} (default_permission=${MLFLOW_AUTH_DEFAULT_PERMISSION}," \
  "admin ${MLFLOW_AUTH_ADMIN_USERNAME})" >&2
exec "$@"
