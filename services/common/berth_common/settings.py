"""Settings of every Berth service, read once from the environment at start-up.

Each service builds its settings object in its entry point and passes it down; nothing reads the
environment anywhere else. A missing or placeholder secret raises at construction, so a service
with a bad `.env` stops at once with a message that names the variable instead of failing later
with an authentication error.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path
from typing import Annotated, Literal, TypedDict, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL

from berth_common.keys import RedisKeys

# Values that people leave in a copied .env; a service must refuse them rather than run with a
# secret everybody knows.
PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "change_me",
        "changethis",
        "password",
        "secret",
        "postgres",
        "redis",
        "berth",
        "example",
        "xxx",
        "todo",
    }
)
MIN_SECRET_LENGTH = 8

PositiveInt = Annotated[int, Field(gt=0)]

# A model name or version: they become path segments, Redis key parts and SQL values, so they stay
# plain. Declared here because PICKLE_SHA256 names bundles too; the bundle code compiles it.
BUNDLE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_PICKLE_PIN = re.compile(rf"({BUNDLE_NAME_PATTERN})/({BUNDLE_NAME_PATTERN})=([0-9a-fA-F]{{64}})")
# A type as skops names it: its module, a dot, its name.
_TYPE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def comma_items(value: str) -> list[str]:
    """The non-empty items of a comma-separated setting, stripped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_trusted_types(value: str) -> frozenset[str]:
    """TRUSTED_TYPES as a set of full type names; ValueError names the first malformed one."""
    names = comma_items(value)
    for name in names:
        if not _TYPE_NAME.fullmatch(name):
            raise ValueError(
                f"TRUSTED_TYPES entries are full names such as mypackage.module.Class, got {name!r}"
            )
    return frozenset(names)


def parse_pickle_pins(value: str) -> dict[str, str]:
    """PICKLE_SHA256 as {"name/version": sha256}; ValueError names the first malformed entry."""
    pins: dict[str, str] = {}
    for item in comma_items(value):
        match = _PICKLE_PIN.fullmatch(item.replace(" ", ""))
        if match is None:
            raise ValueError(
                f"PICKLE_SHA256 entries are name/version=<sha256 in 64 hex digits>, got {item!r}"
            )
        key, digest = f"{match[1]}/{match[2]}", match[3].lower()
        if pins.setdefault(key, digest) != digest:
            raise ValueError(f"PICKLE_SHA256 pins {key} twice, to different hashes")
    return pins


class RedisConnection(TypedDict):
    """Keyword arguments for redis-py's sync and asyncio clients alike."""

    host: str
    port: int
    db: int
    username: str
    password: str


def _check_secret(name: str, value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if raw.strip().lower() in PLACEHOLDER_SECRETS or raw.lower().startswith("change"):
        raise ValueError(
            f"{name} is a placeholder; set a real secret (make up writes one into .env for you)"
        )
    if len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(f"{name} must be at least {MIN_SECRET_LENGTH} characters long")
    return value


class CommonSettings(BaseSettings):
    """What every service needs: where PostgreSQL and Redis are, and how to log."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, case_sensitive=False)

    postgres_host: str = "postgres"
    postgres_port: int = 5432
    postgres_user: str = "berth"
    postgres_password: SecretStr
    postgres_db: str = "berth"

    redis_host: str = "redis"
    redis_port: int = 6379
    redis_password: SecretStr
    redis_db: int = 0
    # Every Redis key Berth writes starts with this, so that several stacks (or test runs) can
    # share one Redis without touching each other's streams and caches.
    redis_key_prefix: str = "berth"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("postgres_password")
    @classmethod
    def _postgres_password_is_real(cls, value: SecretStr) -> SecretStr:
        return _check_secret("POSTGRES_PASSWORD", value)

    @field_validator("redis_password")
    @classmethod
    def _redis_password_is_real(cls, value: SecretStr) -> SecretStr:
        return _check_secret("REDIS_PASSWORD", value)

    @property
    def database_url(self) -> URL:
        return URL.create(
            "postgresql+psycopg2",
            username=self.postgres_user,
            password=self.postgres_password.get_secret_value(),
            host=self.postgres_host,
            port=self.postgres_port,
            database=self.postgres_db,
        )

    def redis_kwargs(self) -> RedisConnection:
        """The username is explicit so that AUTH also succeeds against a Redis without a password
        (its default user accepts any password), such as a developer's local server.
        """
        return RedisConnection(
            host=self.redis_host,
            port=self.redis_port,
            db=self.redis_db,
            username="default",
            password=self.redis_password.get_secret_value(),
        )

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.redis_key_prefix)

    @property
    def ledger_stream(self) -> str:
        return self.keys.ledger_stream

    @property
    def ledger_group(self) -> str:
        return self.keys.ledger_group


AccessLog = Literal["all", "errors", "off"]


class ApiSettings(CommonSettings):
    """Settings of the API service."""

    models_dir: Path = Path("/models")
    default_model: str = "iris"
    # Which version of the default model to serve; empty means the highest version present.
    default_model_version: str = ""
    # Pins for other names, "churn=2,fraud=7"; an unpinned name serves its highest version.
    model_versions: str = ""
    max_batch_rows: PositiveInt = 1000
    max_string_length: PositiveInt = 1000
    # Bodies larger than this are refused with a 413 before any of them is parsed.
    max_body_bytes: PositiveInt = 1_048_576
    # Comma-separated bearer tokens; when set, every endpoint but health and docs requires one.
    api_keys: SecretStr = SecretStr("")
    # Each row's output is kept in Redis and a repeated row is answered from it. Off, every row
    # goes to the model and Redis holds no cache: for rows that rarely repeat (batch scoring),
    # whose cached copies cost Redis memory and, with a fast model, more CPU than the model call.
    cache_enabled: bool = True
    # A model's answers are cached only if it takes at least this many microseconds of its own
    # per row, timed on its example row when it is loaded: under that, the cache costs more CPU
    # than the model calls it saves (serving/cache_policy.py). 0 caches every model.
    cache_min_row_us: Annotated[float, Field(ge=0)] = 20.0
    cache_ttl_seconds: PositiveInt = 3600
    # A cache or ledger call that takes longer than this counts as a Redis failure: the prediction
    # is still served, the cache skipped.
    redis_timeout_seconds: Annotated[float, Field(gt=0)] = 0.5

    @field_validator("model_versions")
    @classmethod
    def _model_versions_parse(cls, value: str) -> str:
        for item in comma_items(value):
            name, _, version = item.partition("=")
            if not name.strip() or not version.strip():
                raise ValueError(f"MODEL_VERSIONS entries are name=version, got {item!r}")
        return value

    @property
    def version_pins(self) -> dict[str, str]:
        """The version each model name is pinned to; DEFAULT_MODEL_VERSION wins for the default."""
        pins = {}
        for item in comma_items(self.model_versions):
            name, _, version = item.partition("=")
            pins[name.strip()] = version.strip()
        if self.default_model_version:
            pins[self.default_model] = self.default_model_version
        return pins

    @property
    def api_key_list(self) -> list[str]:
        return comma_items(self.api_keys.get_secret_value())

    # Ledger entries Redis cannot take are fsynced here (a volume) and replayed when it answers.
    spool_dir: Path = Path("/spool")
    spool_replay_interval_seconds: Annotated[float, Field(gt=0)] = 1.0

    # API processes; each serves requests on its own core. Two fits this 2-core reference machine:
    # one per core, the model calls of each running in its own thread.
    api_workers: PositiveInt = 2
    # Which requests get an access log line: "all" (also true), "errors" (4xx and 5xx only) or
    # "off" (also false). Errors by default: every prediction is in the ledger with its request
    # id and latency, and in the metrics, while a line per request costs about 40% of peak
    # throughput under docker's log driver.
    access_log: AccessLog = "errors"

    @field_validator("access_log", mode="before")
    @classmethod
    def _access_log_words(cls, value: object) -> object:
        words = {"true": "all", "1": "all", "yes": "all", "false": "off", "0": "off", "no": "off"}
        if isinstance(value, bool):
            return "all" if value else "off"
        if isinstance(value, str):
            return words.get(value.strip().lower(), value.strip().lower())
        return value

    allow_version_mismatch: bool = False

    # Which model files may be loaded. A skops file is loaded only with the types it needs listed
    # explicitly: skops' own defaults, the classes of scikit-learn, numpy and scipy, and these,
    # comma-separated full names ("mypackage.features.Binner", as the refusal names them). This
    # list, like the two settings below, comes from the operator and never from the models
    # volume: whoever can write a bundle must not also be able to widen what it may load.
    trusted_types: str = ""
    # Load every pickle (model.joblib) bundle. Unpickling runs whatever code the file names, so
    # with this on, anyone who can write the models volume can run code in the API; off, such a
    # bundle is refused before it is read. Meant for a migration, until `make repackage`.
    allow_pickle: bool = False
    # Pickle bundles trusted one by one, "name/version=<sha256>,...": the hash `make package`
    # printed, pinned here, outside the volume, so that a replaced model.joblib (with a
    # metadata.json to match) is refused. A pin wins over ALLOW_PICKLE: a mismatch is refused.
    pickle_sha256: str = ""

    @field_validator("trusted_types")
    @classmethod
    def _trusted_types_parse(cls, value: str) -> str:
        parse_trusted_types(value)
        return value

    @field_validator("pickle_sha256")
    @classmethod
    def _pickle_sha256_parse(cls, value: str) -> str:
        parse_pickle_pins(value)
        return value

    @property
    def trusted_type_names(self) -> frozenset[str]:
        return parse_trusted_types(self.trusted_types)

    @property
    def pickle_pins(self) -> dict[str, str]:
        """The sha256 each pinned pickle bundle must have, by "name/version"."""
        return parse_pickle_pins(self.pickle_sha256)

    # Deadlines for reading one request: its headers (from its first byte, or from the
    # connection's), and its body (from the end of the headers). A client that misses one gets a
    # 408 and its connection closed, so slow or stalled clients cannot hold connections for ever.
    request_header_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    request_body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # An idle kept-alive connection is closed after this long.
    keep_alive_timeout_seconds: Annotated[int, Field(gt=0, le=3600)] = 5

    # Prometheus metrics. Every API process publishes its figures to a file of its own in this
    # directory once per interval; /metrics and the metrics port merge them all. The directory
    # is emptied when the API starts (a fresh run starts its counters from zero).
    # false stops the API counting anything (its /metrics then shows zeros): only to measure
    # what the metrics cost, which make bench does.
    metrics_enabled: bool = True
    metrics_dir: Path = Path("/tmp/berth-metrics")  # noqa: S108 - the container's own /tmp
    metrics_publish_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # The port that serves /metrics with no key, for Prometheus on the internal network; never
    # publish it. 0 turns it off (GET /metrics on the API port remains).
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9100
    # With API_KEYS set, GET /metrics on the API port also takes this key (a scraper's own),
    # as well as the API keys.
    metrics_key: SecretStr = SecretStr("")
    # How often each process refreshes the ledger's gauges (backlog, spool, workers).
    ledger_gauge_interval_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0

    # X-Request-ID is an idempotency key: a retry with the same id and the same request (model,
    # version, rows) is answered as the first was, and recorded once; the same id with another
    # request is refused (409). Redis remembers each id this long.
    idempotency_ttl_seconds: PositiveInt = 86_400
    # How long a retry waits for the first request with its id to finish before it is refused
    # with a 409 that says the first is still being answered.
    idempotency_wait_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0

    # Continuous batching: rows that arrive while a model is busy go into its next call, up to
    # this many rows per call. A request larger than this is one call of its own.
    batch_max_size: PositiveInt = 64
    # How long a call may wait for more rows once one is queued; 0 never waits (the default:
    # batching then costs a lone request nothing).
    batch_max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    # Serve a bundle's verified ONNX graph (onnxruntime) when it carries one; false forces
    # scikit-learn for every model.
    compiled_models: bool = True
    # Threads per model call (onnxruntime, OpenMP, BLAS) in each API process. More than one
    # per process oversubscribes the cores as soon as API_WORKERS covers them.
    model_threads: PositiveInt = 1


class WorkerSettings(CommonSettings):
    """Settings of the ledger worker."""

    worker_batch_size: PositiveInt = 500
    worker_block_ms: PositiveInt = 1000
    # After a read that found fewer entries than a full batch, wait this long before the next:
    # a steady stream is then stored in a few large transactions a second instead of hundreds of
    # small ones (each a commit and a WAL flush). It adds at most this much to the ledger's lag.
    worker_batch_wait_ms: Annotated[int, Field(ge=0, le=5000)] = 50
    # An entry pending this long on another consumer is taken to be orphaned and claimed.
    worker_claim_idle_ms: PositiveInt = 30_000
    worker_claim_interval_seconds: Annotated[float, Field(gt=0)] = 15.0
    worker_heartbeat_ttl_seconds: PositiveInt = 30
    worker_consumer_name: str = Field(default_factory=socket.gethostname)
    # Deliveries after which an entry that still cannot be written goes to the dead-letter table.
    worker_max_deliveries: PositiveInt = 5
    worker_retry_max_seconds: Annotated[float, Field(gt=0)] = 30.0
    # The port that serves the worker's Prometheus metrics (/metrics); 0 turns it off.
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9101

    def heartbeat_key(self, consumer: str | None = None) -> str:
        return self.keys.heartbeat(consumer or self.worker_consumer_name)


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_or_exit(cls: type[SettingsT]) -> SettingsT:
    """Reads settings for a service entry point; on a bad environment, one line per problem."""
    try:
        return cls()
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            variable = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            message = error["msg"].removeprefix("Value error, ")
            print(f"berth: configuration error: {variable}: {message}", file=sys.stderr)
        raise SystemExit(2) from None
