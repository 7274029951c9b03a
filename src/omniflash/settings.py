"""One ``Settings`` object, built once by the CLI (or a test) and passed down.

Nothing reads the environment at import time: ``Settings.from_env(os.environ)``
is called by the entry point, and tests build their own::

    >>> s = Settings(data_dir=Path("/tmp/x"))
    >>> s.database_url
    'sqlite:////tmp/x/omniflash.db'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from omniflash.pricing import Pricing

__all__ = ["ENV_VARS", "PRICE_VARS", "Settings"]

_TRUE = {"1", "true", "yes", "on"}

ENV_VARS: Final[Mapping[str, str]] = {
    "data_dir": "OMNIFLASH_DATA_DIR",
    "database_url_override": "OMNIFLASH_DATABASE_URL",
    "host": "OMNIFLASH_HOST",
    "port": "OMNIFLASH_PORT",
    "public_url": "OMNIFLASH_PUBLIC_URL",
    "engine": "OMNIFLASH_ENGINE",
    "workers": "OMNIFLASH_WORKERS",
    "task_timeout_s": "OMNIFLASH_TASK_TIMEOUT",
    "lease_s": "OMNIFLASH_LEASE_SECONDS",
    "max_attempts": "OMNIFLASH_MAX_ATTEMPTS",
    "result_ttl_s": "OMNIFLASH_RESULT_TTL",
    "sweep_interval_s": "OMNIFLASH_SWEEP_INTERVAL",
    "default_rpm": "OMNIFLASH_DEFAULT_RPM",
    "read_rpm": "OMNIFLASH_READ_RPM",
    "default_max_concurrent": "OMNIFLASH_DEFAULT_MAX_CONCURRENT",
    "allow_private_urls": "OMNIFLASH_ALLOW_PRIVATE_URLS",
    "fetch_timeout_s": "OMNIFLASH_FETCH_TIMEOUT",
    "recipes_path": "OMNIFLASH_RECIPES",
    "x264_preset": "OMNIFLASH_X264_PRESET",
    "secret_override": "OMNIFLASH_SECRET",
    "storage_url": "OMNIFLASH_STORAGE_URL",
    "s3_endpoint_url": "OMNIFLASH_S3_ENDPOINT_URL",
    "presign_results": "OMNIFLASH_PRESIGN_RESULTS",
    "server_url": "OMNIFLASH_SERVER",
    "worker_token": "OMNIFLASH_WORKER_TOKEN",
    "claim_wait_s": "OMNIFLASH_CLAIM_WAIT",
    "webhook_retry_delays": "OMNIFLASH_WEBHOOK_RETRY_DELAYS",
    "webhook_retry_for_s": "OMNIFLASH_WEBHOOK_RETRY_FOR",
    "webhook_timeout_s": "OMNIFLASH_WEBHOOK_TIMEOUT",
    "metrics_token": "OMNIFLASH_METRICS_TOKEN",
    "log_format": "OMNIFLASH_LOG_FORMAT",
    "upload_ttl_s": "OMNIFLASH_UPLOAD_TTL",
    "max_upload_bytes": "OMNIFLASH_MAX_UPLOAD_BYTES",
    "max_body_bytes": "OMNIFLASH_MAX_BODY_BYTES",
    "max_result_bytes": "OMNIFLASH_MAX_RESULT_BYTES",
    "header_timeout_s": "OMNIFLASH_HEADER_TIMEOUT",
    "body_timeout_s": "OMNIFLASH_BODY_TIMEOUT",
    "events_keepalive_s": "OMNIFLASH_EVENTS_KEEPALIVE_S",
    "preview_interval_s": "OMNIFLASH_PREVIEW_INTERVAL_S",
}
PRICE_VARS: Final[Mapping[str, str]] = {
    "720p": "OMNIFLASH_PRICE_720P",
    "1080p": "OMNIFLASH_PRICE_1080P",
    "4k": "OMNIFLASH_PRICE_4K",
}
"""Credits per second of output, by resolution; ``OMNIFLASH_CREDIT_PRICE`` is one credit's cost."""


def _bool(value: str) -> bool:
    return value.strip().lower() in _TRUE


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of a server or worker.  Environment names are in ``ENV_VARS``."""

    data_dir: Path = Path("omniflash-data")
    database_url_override: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    """Base URL put in result links; by default the URL the request came in on."""
    engine: str = "preview"
    workers: int = 2
    task_timeout_s: float = 15 * 60
    lease_s: float = 30.0
    max_attempts: int = 3
    poll_interval_s: float = 1.0
    result_ttl_s: int = 72 * 3600
    sweep_interval_s: float = 300.0
    default_rpm: int = 60
    """Submits a minute for new keys (exact across replicas)."""
    read_rpm: int = 1200
    """Reads (polls, lists, account) a minute per key, per API process."""
    default_max_concurrent: int = 4
    allow_private_urls: bool = False
    fetch_timeout_s: float = 30.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_video_bytes: int = 200 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_video_seconds: float = 60.0
    max_body_bytes: int = 64 * 1024 * 1024
    """The largest JSON request body (a submit with inline images); larger ones get 413."""
    recipes_path: Path | None = None
    x264_preset: str = "veryfast"
    secret_override: str | None = None
    pricing: Pricing = dataclasses.field(default_factory=Pricing)
    storage_url: str | None = None
    """``s3://BUCKET/PREFIX`` for an S3-compatible bucket; by default the data dir's ``blobs``."""
    s3_endpoint_url: str | None = None
    """The S3 API's URL for non-AWS buckets (MinIO, R2, Ceph RGW…)."""
    presign_results: bool = False
    """Result URLs as presigned bucket URLs (S3 only) instead of the API's signed URLs."""
    server_url: str | None = None
    """A remote worker's API server (``omniflash worker --server``)."""
    worker_token: str | None = None
    """A remote worker's token (``omniflash workers create``)."""
    claim_wait_s: float = 20.0
    """How long a remote worker's claim long-polls before it asks again."""
    worker_index: int = 0
    """Which of the server's workers an engine process serves (it picks a GPU by it)."""
    webhook_retry_delays: str = "5,60,300,1800,7200,18000,36000"
    """Seconds between a webhook's attempts, comma-separated; the last one repeats."""
    webhook_retry_for_s: float = 24 * 3600
    """A webhook is retried until this long after its task ended, then given up."""
    webhook_timeout_s: float = 10.0
    """One webhook attempt's limit, from DNS to the answer."""
    webhook_poll_s: float = 1.0
    """How often an idle sender looks for due webhooks."""
    metrics_token: str | None = None
    """When set, ``GET /metrics`` wants ``Authorization: Bearer <token>``."""
    log_format: str = "text"
    """``text`` or ``json`` (one object a line)."""
    upload_ttl_s: int = 72 * 3600
    """How long an uploaded image's signed URL (``POST /v1/uploads/images``) lasts."""
    max_upload_bytes: int = 20 * 1024 * 1024
    """The largest image ``POST /v1/uploads/images`` takes; also the limit of an inline
    (``data:``) image, of a multipart ``input_reference`` and of MCP's ``upload_image``."""
    max_result_bytes: int = 2 * 1024 * 1024 * 1024
    """The largest result file a remote worker may upload (``PUT /worker/v1/tasks/…/result``)."""
    header_timeout_s: float = 10.0
    """A connection that has not sent a whole request head in this long is closed."""
    body_timeout_s: float = 30.0
    """A request body that sends nothing for this long is answered 408 and closed."""
    events_keepalive_s: float = 15.0
    """An event stream with nothing to say sends a ``: keep-alive`` comment this often."""
    preview_interval_s: float = 2.0
    """A worker passes on at most one preview frame of a task this often; the others drop."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from environment variables, then explicit ``overrides`` (CLI flags) on top."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            kind = fields[name].type
            if "bool" in str(kind):
                values[name] = _bool(raw)
            elif "Path" in str(kind):
                values[name] = Path(raw)
            elif "int" in str(kind):
                values[name] = int(raw)
            elif "float" in str(kind):
                values[name] = float(raw)
            else:
                values[name] = raw
        per_second = dict(Pricing().per_second)
        per_second.update({res: float(env[var]) for res, var in PRICE_VARS.items() if env.get(var)})
        price = env.get("OMNIFLASH_CREDIT_PRICE")
        values["pricing"] = Pricing(
            per_second=per_second,
            credit_price=float(price) if price else Pricing().credit_price,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite:///{self.data_dir.resolve() / 'omniflash.db'}"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "scratch"
