"""Every setting of the service, read from the environment (or a .env file)."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ThumbnailBox = tuple[int, int]


def _parse_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MIN_KEY_LENGTH = 32


class Settings(BaseSettings):
    """One flat object; every field maps to the upper-case environment variable of its name."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/thumbnailer",
        description="PostgreSQL URL; plain postgresql:// is accepted and driven by asyncpg.",
    )
    database_pool_size: int = Field(10, ge=1, description="Connections kept per process.")
    rabbitmq_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", description="AMQP URL of RabbitMQ."
    )
    queue_name: str = Field(
        "thumbnailer.jobs",
        description="Work queue; its retry and dead-letter queues are named after it.",
    )
    storage_path: Path = Field(
        Path("./data/storage"), description="Directory for originals and thumbnails."
    )
    storage_backend: Literal["local", "s3"] = Field(
        "local",
        description="Where originals and thumbnails live: local (STORAGE_PATH) or s3 (a bucket).",
    )
    s3_bucket: str = Field(
        "", description="Bucket of the s3 backend; required when STORAGE_BACKEND=s3."
    )
    s3_endpoint_url: str = Field(
        "",
        description="S3 API endpoint; empty means AWS; set it for MinIO, R2, GCS, Ceph.",
    )
    s3_region: str = Field(
        "us-east-1", description="Region requests are signed for (R2 takes auto)."
    )
    s3_prefix: str = Field(
        "", description="Key prefix inside the bucket, so one bucket can hold several services."
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto",
        description="Bucket in the host name (virtual) or the path; auto: virtual on AWS, "
        "path on a custom endpoint.",
    )
    s3_public_base_url: str = Field(
        "",
        description="Plain URLs under this base (a CDN or public bucket) instead of presigned "
        "ones; empty means presigned.",
    )
    signed_url_ttl: int = Field(
        3600,
        ge=60,
        le=604800,
        description="Seconds a handed-out signed or presigned URL stays valid at least, rounded "
        "up to a window of a quarter of it so the same URL repeats and caches hit.",
    )
    spool_path: Path = Field(
        Path(tempfile.gettempdir()) / "thumbnailer-spool",
        description="Local scratch directory uploads stream into before they are stored; "
        "keep it off the shared volume.",
    )
    public_base_url: str = Field(
        "",
        description="Base of the URLs handed to clients (e.g. https://img.example.com); "
        "empty means the URL the request came in on.",
    )
    max_file_size: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest upload in bytes, counted while streaming."
    )
    max_form_parts: int = Field(
        16, ge=1, description="Most parts a multipart upload may have; more is refused (422)."
    )
    max_concurrent_uploads: int = Field(
        32,
        ge=1,
        description="Uploads one API process receives at once; more answer 503 + Retry-After.",
    )
    upload_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may take to send one upload; slower ones get 408.",
    )
    min_free_space: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Bytes of free space the store must keep; below it uploads get 507.",
    )
    max_image_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Largest width*height accepted, checked from the header before decoding.",
    )
    max_decode_memory: int = Field(
        320 * 1024 * 1024,
        ge=1,
        description="Most memory one image may need to decode, estimated from its header: "
        "over it the upload gets 413, and a job's decoder is capped at it.",
    )
    max_jpeg_scans: int = Field(
        100,
        ge=1,
        description="Most scans a progressive JPEG may have (encoders write about 10; "
        "thousands are a CPU trap).",
    )
    thumbnail_sizes: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [100, 300, 1200],
        description="Square boxes the thumbnails must fit in, comma-separated.",
    )
    jpeg_quality: int = Field(
        85, ge=1, le=100, description="Quality of the thumbnails (JPEG, WebP or AVIF)."
    )
    thumbnail_format: Literal["auto", "webp", "avif"] = Field(
        "auto",
        description="Format of the standard thumbnails: auto is JPEG (WebP when the alpha is "
        "used), webp or avif for every image.",
    )
    max_variant_size: int = Field(
        4096,
        ge=1,
        description="Longest side a variant may ask for; more is refused (422) so one request "
        "cannot book a huge encode.",
    )
    max_variants_per_image: int = Field(
        20,
        ge=0,
        description="Variants one image may have; more is refused (422), bounding the rows, "
        "jobs and files one image can cost.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged."
    )
    log_format: Literal["json", "console"] = Field(
        "json", description="json for machines, console for a terminal."
    )
    api_host: str = Field("0.0.0.0", description="Interface the API binds.")  # noqa: S104
    api_port: int = Field(8000, description="Port the API listens on.")
    api_workers: int = Field(
        1, ge=1, description="uvicorn worker processes; metrics are then aggregated across them."
    )
    prometheus_multiproc_dir: str = Field(
        "",
        description="Directory where API processes pool their metrics, emptied at start; "
        "empty means a fresh temporary one when API_WORKERS > 1.",
    )
    max_poll_wait: float = Field(
        30.0, ge=0, description="Longest `?wait=` a status request may hold, in seconds."
    )
    sse_heartbeat: float = Field(
        15.0,
        gt=0,
        description="Seconds between comment lines on an idle event stream, so proxies and "
        "load balancers do not close it as dead.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed by CORS; * allows any.",
    )
    worker_concurrency: int = Field(
        2, ge=1, description="Images processed at once per worker (threads and prefetch)."
    )
    worker_memory_budget: int = Field(
        640 * 1024 * 1024,
        ge=1,
        description="Decode memory a worker's jobs may use together; a job waits for room.",
    )
    job_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds one image may take to process; a job over it ends ERROR and its "
        "decoder process is replaced.",
    )
    worker_http_port: int = Field(
        8001, description="Port of the worker's probes and metrics; 0 disables it."
    )
    shutdown_grace_period: float = Field(
        25.0, ge=0, description="Seconds a stopping worker waits for jobs in flight."
    )
    max_retries: int = Field(
        5, ge=0, description="Transient-failure retries before a job is dead-lettered."
    )
    max_deliveries: int = Field(
        5,
        ge=1,
        description="Times a job may be cut short (its worker killed or stopped mid-job) "
        "before it ends ERROR and is dead-lettered: stops a crash loop.",
    )
    dead_letter_max_length: int = Field(
        100_000, ge=1, description="Messages the dead-letter queue keeps; the oldest go first."
    )
    dead_letter_ttl: float = Field(
        14 * 86400.0,
        gt=0,
        description="Seconds a dead-lettered message is kept for an operator to inspect.",
    )
    retry_base_delay: float = Field(
        1.0, gt=0, description="First retry delay in seconds; doubles each attempt."
    )
    url_fetch_timeout: float = Field(
        15.0,
        gt=0,
        description="Seconds one URL fetch may take in all (connect, redirects, body), so a "
        "slow or dripping source cannot hold a worker.",
    )
    url_fetch_concurrency: int = Field(
        4,
        ge=1,
        description="URL fetches a worker runs at once, on a queue of their own, so slow "
        "sources never hold up thumbnails.",
    )
    url_fetch_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Sources (host or host:port, comma-separated) exempt from the SSRF "
        "address check, for image servers on an internal network.",
    )
    webhook_url: str = Field(
        "",
        description="URL every image's DONE or ERROR is POSTed to (besides its own "
        "callback_url); empty means none. Needs WEBHOOK_SECRET.",
    )
    webhook_secret: str = Field(
        "",
        description="HMAC-SHA256 key of the Thumbnailer-Signature header; webhooks and "
        "callback_url are refused while it is empty.",
    )
    webhook_timeout: float = Field(
        10.0, gt=0, description="Seconds a webhook receiver has to answer one call."
    )
    webhook_concurrency: int = Field(
        4,
        ge=1,
        description="Webhook calls a worker makes at once, on a queue of their own, so slow "
        "receivers never hold up thumbnails.",
    )
    relay_interval: float = Field(
        5.0, gt=0, description="Seconds between sweeps that publish rows left unpublished."
    )
    processing_timeout: float = Field(
        600.0, gt=0, description="Seconds a row may stay PROCESSING before it is published again."
    )
    retention_days: float = Field(
        0.0,
        ge=0,
        description="Days an image is kept after its upload; then the sweep deletes it and "
        "its files. 0 keeps everything.",
    )
    error_retention_days: float = Field(
        0.0,
        ge=0,
        description="Days an image that ended ERROR is kept after it failed; then the sweep "
        "deletes it and its original. 0 keeps them.",
    )
    retention_interval: float = Field(
        3600.0,
        gt=0,
        description="Seconds between retention sweeps (expired images, orphan files, expired "
        "idempotency keys); one replica sweeps at a time.",
    )
    idempotency_ttl: float = Field(
        86400.0,
        gt=0,
        description="Seconds an Idempotency-Key is remembered: a retry within it replays the "
        "first answer instead of uploading again.",
    )
    auth_mode: Literal["none", "jwt"] = Field(
        "none",
        description="none: anyone who reaches the API may do anything (a trusted front); "
        "jwt: bearer tokens, images owned by their uploader, signed file URLs.",
    )
    jwt_secret: str = Field(
        "", description="HS256 key of the tokens in jwt mode (or JWT_JWKS_URL, never both)."
    )
    jwt_jwks_url: str = Field(
        "",
        description="URL of the issuer's JWKS (RS256/ES256/EdDSA keys) in jwt mode, "
        "cached and refetched on an unknown kid at most once a minute.",
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted token algorithms; empty means HS256 with JWT_SECRET, "
        "RS256,ES256,EdDSA with JWT_JWKS_URL.",
    )
    jwt_audience: str = Field(
        "", description="Required `aud` of tokens; empty means tokens must carry no audience."
    )
    jwt_issuer: str = Field("", description="Required `iss` of tokens; empty means not checked.")
    jwt_leeway: float = Field(
        30.0, ge=0, le=300, description="Seconds of clock skew allowed on exp, nbf and iat."
    )
    url_signing_key: str = Field(
        "",
        description="HMAC key of the file URLs handed out in jwt mode (32+ characters, the "
        "same on every API replica).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis that keeps the rate-limit counters."
    )
    redis_key_prefix: str = Field(
        "thumbnailer", description="Prefix of every Redis key, so deployments can share one."
    )
    rate_limit_uploads: str = Field(
        "60/minute", description="Uploads per subject (client address in none mode)."
    )
    rate_limit_requests: str = Field(
        "1200/minute", description="API requests per subject (client address in none mode)."
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1"],
        description="Proxies (IPs or CIDRs, * for any) whose X-Forwarded-For/-Proto/-Host "
        "are believed, comma-separated.",
    )
    metrics_port: int = Field(
        9000,
        description="Internal port of the API's /metrics in jwt mode (off the public API "
        "port); 0 disables it.",
    )

    @field_validator(
        "thumbnail_sizes",
        "cors_origins",
        "jwt_algorithms",
        "forwarded_allow_ips",
        "url_fetch_allowed_hosts",
        mode="before",
    )
    @classmethod
    def _split_csv(cls, value: object) -> object:
        return _parse_csv(value)

    @model_validator(mode="after")
    def _webhook_is_signed(self) -> Settings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("WEBHOOK_URL needs a WEBHOOK_SECRET to sign the calls with")
        return self

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> Settings:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("S3_BUCKET is required when STORAGE_BACKEND=s3")
        return self

    @field_validator("database_url")
    @classmethod
    def _use_asyncpg(cls, value: str) -> str:
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        return value

    @field_validator("rate_limit_uploads", "rate_limit_requests")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many

        parse_many(value)  # ValueError on anything limits cannot read
        return value

    @model_validator(mode="after")
    def _jwt_mode_is_complete(self) -> Settings:
        if self.auth_mode == "jwt":
            _check_jwt_mode(self)
        return self

    @property
    def accepted_algorithms(self) -> list[str]:
        if self.jwt_algorithms:
            return list(self.jwt_algorithms)
        return ["HS256"] if self.jwt_secret else ["RS256", "ES256", "EdDSA"]

    @property
    def thumbnail_boxes(self) -> list[ThumbnailBox]:
        return [(size, size) for size in sorted(set(self.thumbnail_sizes), reverse=True)]


def _check_jwt_mode(settings: Settings) -> None:
    """One key source per issuer, and an allow-list that cannot mix HMAC with public keys."""
    if bool(settings.jwt_secret) == bool(settings.jwt_jwks_url):
        raise ValueError("AUTH_MODE=jwt needs exactly one of JWT_SECRET and JWT_JWKS_URL")
    algorithms = set(settings.accepted_algorithms)
    family = HMAC_ALGORITHMS if settings.jwt_secret else ASYMMETRIC_ALGORITHMS
    if not algorithms or not algorithms <= family:
        source = "JWT_SECRET" if settings.jwt_secret else "JWT_JWKS_URL"
        raise ValueError(
            f"JWT_ALGORITHMS {sorted(algorithms)} do not fit {source}: allowed {sorted(family)}"
        )
    if settings.jwt_secret and len(settings.jwt_secret.encode()) < MIN_KEY_LENGTH:
        raise ValueError(f"JWT_SECRET must be at least {MIN_KEY_LENGTH} bytes")
    if len(settings.url_signing_key.encode()) < MIN_KEY_LENGTH:
        raise ValueError(f"AUTH_MODE=jwt needs a URL_SIGNING_KEY of {MIN_KEY_LENGTH}+ bytes")


@lru_cache
def get_settings() -> Settings:
    return Settings()
