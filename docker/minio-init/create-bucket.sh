#!/bin/sh
# One-shot set-up of MinIO, run by the minio-init service (quay.io/minio/mc image) on every
# `docker compose up`; each step is idempotent.
#   1. the bucket S3_BUCKET, private;
#   2. a policy that can read and write that bucket only;
#   3. the user S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY with that policy: Airflow and MLflow use it,
#      never the root credentials.
set -eu

: "${MINIO_ENDPOINT:=http://minio:9000}"
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
: "${S3_BUCKET:?S3_BUCKET is not set}"
: "${S3_ACCESS_KEY_ID:?S3_ACCESS_KEY_ID is not set}"
: "${S3_SECRET_ACCESS_KEY:?S3_SECRET_ACCESS_KEY is not set}"

if [ "$S3_ACCESS_KEY_ID" = "$MINIO_ROOT_USER" ]; then
  echo "S3_ACCESS_KEY_ID must differ from MINIO_ROOT_USER: the applications get their own user" >&2
  exit 1
fi

policy_name="${S3_BUCKET}-readwrite"
policy_file="/tmp/${policy_name}.json"

# Retries: the server can report ready a moment before it accepts admin calls.
attempt=0
until mc alias set local "$MINIO_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  attempt=$((attempt + 1))
  if [ "$attempt" -ge 10 ]; then
    echo "MinIO at $MINIO_ENDPOINT did not accept the root credentials" >&2
    exit 1
  fi
  sleep 3
done

mc mb --ignore-existing "local/${S3_BUCKET}"
mc anonymous set none "local/${S3_BUCKET}"

cat >"$policy_file" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::${S3_BUCKET}"]
    },
    {
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::${S3_BUCKET}/*"]
    }
  ]
}
EOF
mc admin policy create local "$policy_name" "$policy_file"

# Adding an existing user updates its secret key, so a changed .env takes effect on the next start.
mc admin user add local "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"
# Attaching a policy twice is an error, so look first (plain sh: the mc image has no grep).
user_info="$(mc admin user info local "$S3_ACCESS_KEY_ID")"
case "$user_info" in
  *"$policy_name"*) echo "user ${S3_ACCESS_KEY_ID} already has policy ${policy_name}" ;;
  *) mc admin policy attach local "$policy_name" --user "$S3_ACCESS_KEY_ID" ;;
esac

echo "bucket s3://${S3_BUCKET} ready for ${S3_ACCESS_KEY_ID}"
