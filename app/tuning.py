"""How a worker process is tuned: its Faust app, its RocksDB tables, the GC and its port.

Policy, kept apart from the wiring in :mod:`nearline.app.worker`: each function says what
it sets and why, and the worker only calls it.
"""

from __future__ import annotations

import gc
import socket
from typing import Any

import faust

from nearline.app.web_server import WebServerError
from nearline.foundation.broker_workarounds import BrokerWorkarounds
from nearline.foundation.kafka import ssl_context
from nearline.foundation.settings import Settings

__all__ = ["faust_app", "table_options", "tune_gc", "worker_port"]


def _credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_app(settings: Settings, workarounds: BrokerWorkarounds) -> faust.App:
    """The worker's Faust app: RocksDB tables, no web server of its own, batch-sized I/O."""
    return faust.App(
        settings.app_id,
        broker=settings.broker_url,
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        canonical_url=settings.web_url,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        # One fetch is at most one ingest batch (changelog recovery reads in these too).
        broker_max_poll_records=settings.batch_max,
        # An ingest batch writes megabytes of changelog; 16 KiB producer batches (Faust's
        # default) made that one small produce request after another.
        producer_max_batch_size=1 << 20,
        producer_max_request_size=4 << 20,
        autodiscover=False,
        **workarounds.faust_options(),
    )


def table_options(settings: Settings) -> dict[str, Any]:
    """RocksDB options of each partition of a changelog table."""
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
        "max_write_buffer_number": 3,
        "block_cache_size": settings.rocksdb_block_cache_mb << 20,
        "block_cache_compressed_size": 0,
    }


def tune_gc() -> None:
    """Freeze what start-up built out of the cyclic GC, and run it less often.

    An ingest batch decodes hundreds of thousands of short-lived lists and dicts (member
    states, events); with the default thresholds the cyclic GC ran every few hundred of
    them and re-scanned everything alive.
    """
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)


def worker_port(settings: Settings) -> int:
    """The port the worker serves HTTP on, checked free before anything starts.

    With serving processes the public port is theirs; the worker keeps its probes, metrics
    and console data on a port of its own.
    """
    port, variable = (
        (settings.worker_port, "NEARLINE_WORKER_PORT")
        if settings.serve_processes
        else (settings.web_port, "NEARLINE_WEB_PORT")
    )
    _check_port_free(settings.web_host, port, variable)
    return port


def _check_port_free(host: str, port: int, variable: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise WebServerError(
                f"cannot serve HTTP on {host}:{port} ({exc.strerror}); "
                f"set {variable} to a free port"
            ) from None
