"""Print a fresh omniflash.env for compose.yaml: random passwords, never committed.

    python3 deploy/compose/make-env.py > omniflash.env && chmod 600 omniflash.env
"""

import secrets

db_password = secrets.token_urlsafe(24)
s3_password = secrets.token_urlsafe(24)
print(f"""\
POSTGRES_PASSWORD={db_password}
OMNIFLASH_DATABASE_URL=postgresql://omniflash:{db_password}@postgres:5432/omniflash
MINIO_ROOT_USER=omniflash
MINIO_ROOT_PASSWORD={s3_password}
AWS_ACCESS_KEY_ID=omniflash
AWS_SECRET_ACCESS_KEY={s3_password}
AWS_DEFAULT_REGION=us-east-1""")
