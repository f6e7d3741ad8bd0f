"""The one settings object: every knob nearline has, read from ``NEARLINE_*`` variables."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Profile", "Settings", "SettingsError", "load_settings", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"96h"``, ``"4d"`` or ``"250ms"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 15m, 96h or 4d")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be a positive duration")
    return seconds


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
DurationList = Annotated[list[Duration], NoDecode, BeforeValidator(_split_list)]


class Profile(StrEnum):
    """Where nearline runs: the embedded single-machine stack, or a real cluster."""

    EMBEDDED = "embedded"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """A ``NEARLINE_*`` variable holds a value nearline cannot use; the message names it."""


class Settings(BaseSettings):
    """Everything configurable, each field read from ``NEARLINE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="NEARLINE_", extra="ignore", frozen=True)

    profile: Profile = Profile.EMBEDDED
    app_id: str = "nearline"

    # Kafka
    broker_url: CommaList = Field(default_factory=lambda: ["kafka://127.0.0.1:9092"])
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    topic_actions: str = "member-actions"
    topic_dlq: str = "member-actions.dlq"
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    standby_replicas: int = Field(default=0, ge=0)

    # What is kept, and for how long
    actions_of_interest: CommaList = Field(
        default_factory=lambda: ["view", "click", "apply", "save", "dismiss"]
    )
    windows: DurationList = Field(default_factory=lambda: [3600.0, 86400.0, 345600.0])
    retention: Duration = 345600.0
    bucket: Duration = 60.0
    max_recent_actions: int = Field(default=100, ge=1)
    max_event_bytes: int = Field(default=16384, ge=256)
    max_future_skew: Duration = 300.0
    # An event without ts takes its Kafka record's timestamp (else it is a dead letter).
    ts_from_record: bool = True
    sweep_interval: Duration = 300.0
    # Event ids are remembered per member for this long after they arrive (at most this
    # many per member), so producer retries count once.
    dedupe_window: Duration = 86400.0
    dedupe_max_ids: int = Field(default=5000, ge=1)

    # Ingest batching
    batch_max: int = Field(default=20000, ge=1)
    fetch_max_wait: Duration = 0.02

    # Liveness
    lag_interval: Duration = 1.0
    stall_timeout: Duration = 30.0
    rebalance_timeout: Duration = 300.0

    # Local state
    data_dir: Path = Path("./data")
    # RocksDB memory per owned partition: Faust's defaults (3 x 64 MiB memtables and a
    # 2 GiB block cache each) let a worker grow to gigabytes.
    rocksdb_write_buffer_mb: int = Field(default=16, ge=1)
    rocksdb_block_cache_mb: int = Field(default=64, ge=1)

    # Web
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=1, le=65535)
    advertised_url: str | None = None
    forward_timeout: Duration = 2.0
    max_in_flight: int = Field(default=32, ge=1)
    max_in_flight_behind: int = Field(default=4, ge=0)
    # Serving processes (`nearline serve`): 0 serves the API from the worker's own event
    # loop; N > 0 leaves it to N processes beside the worker, on NEARLINE_WEB_PORT, and the
    # worker keeps its probes and metrics on NEARLINE_WORKER_PORT.
    serve_processes: int = Field(default=0, ge=0, le=64)
    worker_port: int = Field(default=8081, ge=1, le=65535)
    # A serving process catches its view of a partition up with the worker at most this
    # often: an answer is at most this much older than the worker's state.
    serve_max_staleness: Duration = 0.01
    # A serving process whose event loop has not ticked for this long is hung: the
    # supervisor kills it and starts it again (as gunicorn's --timeout does its workers).
    serve_hang_timeout: Duration = 30.0

    # Attribute store and joins
    attribute_store: str = "embedded"
    aerospike_hosts: CommaList = Field(default_factory=list)
    aerospike_namespace: str = "nearline"
    aerospike_set_items: str = "items"
    aerospike_set_members: str = "members"
    aerospike_user: str | None = None
    aerospike_password: str | None = None
    aerospike_tls_name: str | None = None
    aerospike_tls_cafile: Path | None = None
    aerospike_connect_timeout: Duration = 1.0
    aerospike_total_timeout: Duration = 0.2
    aerospike_retries: int = Field(default=2, ge=0)
    embedding_dim: int = Field(default=64, ge=1)
    join_at_ingest: CommaList = Field(default_factory=lambda: ["geo", "category", "company"])
    join_at_read: CommaList = Field(default_factory=lambda: ["embedding"])
    attribute_cache_ttl: Duration = 60.0
    attribute_cache_size: int = Field(default=100_000, ge=0)
    topic_item_attributes: str = "item-attributes"

    # Recommendations
    api_token: str | None = None
    model_dir: Path | None = None
    torch_threads: int = Field(default=1, ge=1)
    max_candidates: int = Field(default=1000, ge=1)
    model_reload_interval: Duration = 10.0
    model_half_life: Duration = 6 * 3600.0
    model_short_window: Duration = 1800.0
    outcome_horizon: Duration = 1800.0
    outcome_label_interval: Duration = 1.0
    unlabeled_as: str = "negative"
    log_candidates: str = "served"
    topic_recommendations_log: str = "recommendations-log"
    topic_training_examples: str = "training-examples"
    #: Member erasures (compacted; partitioned like the actions): see agents/erasures.py.
    topic_erasures: str = "member-erasures"

    log_level: str = "INFO"

    @field_validator("unlabeled_as")
    @classmethod
    def _known_unlabeled(cls, value: str) -> str:
        if value.lower() not in {"negative", "skip"}:
            raise ValueError("must be negative (no reaction = label 0) or skip (not an example)")
        return value.lower()

    @field_validator("log_candidates")
    @classmethod
    def _known_log_candidates(cls, value: str) -> str:
        if value.lower() not in {"served", "all"}:
            raise ValueError(
                "must be served (the k items of the response) or all (every candidate)"
            )
        return value.lower()

    @field_validator("attribute_store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value.lower() not in {"embedded", "aerospike"}:
            raise ValueError("must be embedded or aerospike")
        return value.lower()

    @field_validator("kafka_security_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        allowed = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
        if value.upper() not in allowed:
            raise ValueError(f"must be one of {', '.join(sorted(allowed))}")
        return value.upper()

    @field_validator("kafka_sasl_mechanism")
    @classmethod
    def _known_mechanism(cls, value: str) -> str:
        allowed = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
        if value.upper() not in allowed:
            raise ValueError(f"must be one of {', '.join(sorted(allowed))}")
        return value.upper()

    @field_validator("actions_of_interest", "broker_url")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one value (comma-separated)")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @model_validator(mode="after")
    def _windows_fit_retention(self) -> Settings:
        if not self.windows:
            raise ValueError("NEARLINE_WINDOWS must name at least one window")
        if max(self.windows) > self.retention:
            raise ValueError(
                "NEARLINE_WINDOWS: the longest window is longer than NEARLINE_RETENTION; "
                "data older than the retention is deleted, so such a window could never fill"
            )
        if self.bucket > min(self.windows):
            raise ValueError("NEARLINE_BUCKET must not be longer than the shortest window")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError(
                "NEARLINE_KAFKA_SASL_USERNAME is required when "
                "NEARLINE_KAFKA_SECURITY_PROTOCOL uses SASL"
            )
        if self.serve_processes and self.worker_port == self.web_port:
            raise ValueError(
                "NEARLINE_WORKER_PORT must differ from NEARLINE_WEB_PORT when "
                "NEARLINE_SERVE_PROCESSES is above 0: the serving processes take the web port"
            )
        if self.attribute_store == "aerospike" and not self.aerospike_hosts:
            raise ValueError(
                "NEARLINE_AEROSPIKE_HOSTS is required when NEARLINE_ATTRIBUTE_STORE=aerospike "
                "(comma-separated host:port)"
            )
        return self

    @cached_property
    def web_url(self) -> str:
        """The URL other workers use to reach this one (forwarding to a partition owner)."""
        if self.advertised_url:
            return self.advertised_url.rstrip("/")
        host = "127.0.0.1" if self.web_host in {"0.0.0.0", "::", ""} else self.web_host
        return f"http://{host}:{self.web_port}"

    @property
    def worker_url(self) -> str:
        """Where the serving processes of this pod reach their worker (same host)."""
        return f"http://127.0.0.1:{self.worker_port}"

    @property
    def topic_repartition(self) -> str:
        """Where actions found on another partition than their key's are re-keyed through.

        Internal, like Faust's changelogs, so named after the app id; it has the actions
        topic's partition count and is read by the owner of each partition.
        """
        return f"{self.app_id}-{self.topic_actions}-repartition"

    @property
    def embedded(self) -> bool:
        return self.profile is Profile.EMBEDDED

    @property
    def window_names(self) -> list[str]:
        return [format_duration(w) for w in self.windows]


def format_duration(seconds: float) -> str:
    """An exact spelling of a duration: ``3600 -> "1h"``, ``345600 -> "96h"``, ``90 -> "90s"``.

    Days are used from a week up, so the usual 24h/96h windows keep their familiar names.
    """
    units = ("d", "h", "m", "s") if seconds >= 7 * 86400 else ("h", "m", "s")
    for unit in units:
        size = _UNITS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{int(seconds * 1000)}ms"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (plus ``overrides``); a bad value raises :class:`SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"] if isinstance(part, str))
            name = f"NEARLINE_{field.upper()}" if field else "settings"
            given = error.get("input")
            shown = f" (got {given!r})" if field and not isinstance(given, dict) else ""
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message}{shown}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
