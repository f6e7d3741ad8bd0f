"""The production attribute store: Aerospike through its synchronous C client, off the event loop.

Bin mapping (one record per id; key ``(namespace, set, id)``, the id is also sent and kept
with the record so ``aql`` and backups show it):

======== ============== =====================================================================
set      bin            value
======== ============== =====================================================================
items    ``id``         the item id (string)
items    ``embedding``  list of doubles, ``embedding_dim`` long; absent when the item has none
items    ``geo``        map ``{"lat": double, "lon": double, "region": string}`` (parts set)
items    ``attrs``      map of free-form attributes (category, company, seniority…)
members  ``id``         the member id
members  ``attrs``      map of free-form attributes
======== ============== =====================================================================

Attributes share one map bin instead of a bin each because bin names are capped at 15
characters and a namespace at 64k distinct bin names, while attribute names are free-form.
Writes replace the whole record (``POLICY_EXISTS_CREATE_OR_REPLACE``), so a bin that a new
version no longer has (an embedding removed) disappears rather than lingering.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nearline.attribute_store.exceptions import StoreUnavailable
from nearline.attribute_store.schema import (
    AttributeRecord,
    Geo,
    ItemAttributes,
    Kind,
    MemberAttributes,
)
from nearline.attribute_store.store import AttributeStore, StoreHealth
from nearline.foundation.extras import requires_extra

with requires_extra("NEARLINE_ATTRIBUTE_STORE=aerospike"):
    import aerospike
    from aerospike import exception as aerospike_errors
    from aerospike_helpers.batch.records import BatchRecords, Write
    from aerospike_helpers.operations import operations

__all__ = [
    "AerospikeAttributeStore",
    "parse_host",
    "record_from_bins",
    "record_to_bins",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 3000
_RESULT_OK = 0
_RESULT_NOT_FOUND = 2
# Beyond the configured timeouts, how long an await may wait for the client thread. The C
# client enforces the timeouts itself; this margin only keeps a misbehaving call from
# holding a caller forever.
_GUARD_MARGIN = 0.5


def parse_host(spec: str, tls_name: str | None = None) -> tuple[Any, ...]:
    """``"host"``, ``"host:port"`` or ``"[v6]:port"`` as the client's host tuple."""
    host, port = spec.strip(), DEFAULT_PORT
    if host.startswith("["):
        closing = host.index("]")
        rest = host[closing + 1 :]
        host, port = host[1:closing], int(rest[1:]) if rest.startswith(":") else port
    elif host.count(":") == 1:
        host, _, text = host.partition(":")
        if not text.isdigit():
            raise ValueError(f"{spec!r}: the port must be a number (host:port)")
        port = int(text)
    if not host:
        raise ValueError(f"{spec!r} has no host name")
    return (host, port, tls_name) if tls_name else (host, port)


#: Bin names of the stored form's fields where they differ (the table at the top).
_BIN_NAMES = {"item_id": "id", "member_id": "id", "attributes": "attrs"}


def record_to_bins(record: AttributeRecord) -> dict[str, Any]:
    """The bins of a record: its stored form (``to_dict``, parts it lacks left out), under
    the bin names of the table at the top of this module."""
    return {_BIN_NAMES.get(name, name): value for name, value in record.to_dict().items()}


def record_from_bins(kind: Kind, bins: Mapping[str, Any]) -> AttributeRecord:
    """The record :func:`record_to_bins` wrote."""
    attributes = dict(bins.get("attrs") or {})
    if kind == "members":
        return MemberAttributes(bins["id"], attributes)
    geo = bins.get("geo")
    embedding = bins.get("embedding")
    return ItemAttributes(
        bins["id"],
        [float(x) for x in embedding] if embedding is not None else None,
        Geo(geo.get("lat"), geo.get("lon"), geo.get("region")) if geo else None,
        attributes,
    )


class AerospikeAttributeStore(AttributeStore):
    """Attributes in an Aerospike namespace, one set per kind.

    The C client blocks, so every call runs in a small dedicated thread pool and the event
    loop only awaits it. The connection is made lazily and made again after a failure, at
    most once per ``reconnect_backoff`` seconds; in between, calls fail at once with
    :class:`StoreUnavailable` instead of each paying the connect timeout, so a worker
    keeps ingesting (unjoined) while the cluster is down and joins again when it is back.
    """

    backend = "aerospike"

    def __init__(
        self,
        hosts: Sequence[str],
        *,
        namespace: str,
        sets: Mapping[Kind, str] | None = None,
        user: str | None = None,
        password: str | None = None,
        tls_name: str | None = None,
        tls_cafile: Path | str | None = None,
        connect_timeout: float = 1.0,
        total_timeout: float = 0.2,
        max_retries: int = 2,
        reconnect_backoff: float = 1.0,
        threads: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not hosts:
            raise ValueError("at least one Aerospike host is needed (NEARLINE_AEROSPIKE_HOSTS)")
        self.hosts = [parse_host(host, tls_name) for host in hosts]
        self.namespace = namespace
        self.sets: dict[Kind, str] = {"items": "items", "members": "members", **(sets or {})}
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_retries = max_retries
        self.reconnect_backoff = reconnect_backoff
        self._user = user
        self._password = password
        self._tls_name = tls_name
        self._tls_cafile = tls_cafile
        self._clock = clock
        self._client: aerospike.Client | None = None
        self._connect_lock = threading.Lock()
        self._failed_at: float | None = None
        self._last_error = ""
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="nearline-aerospike"
        )
        # Seeds are tried one after another, each within the connect timeout.
        self._guard = connect_timeout * len(self.hosts) + total_timeout + _GUARD_MARGIN

    @property
    def where(self) -> str:
        """``host:port`` of every seed, for messages."""
        return ", ".join(f"{h[0]}:{h[1]}" for h in self.hosts)

    # -- client configuration ----------------------------------------------------------

    def client_config(self) -> dict[str, Any]:
        """The ``aerospike.client`` configuration built from this store's settings."""
        total_ms = max(1, round(self.total_timeout * 1000))
        # The total timeout covers every try; a per-try socket timeout of an equal share
        # leaves room for the retries against a node that accepts and never answers.
        socket_ms = max(1, total_ms // (self.max_retries + 1))
        timing = {
            "total_timeout": total_ms,
            "socket_timeout": socket_ms,
            "max_retries": self.max_retries,
        }
        connect_ms = max(1, round(self.connect_timeout * 1000))
        config: dict[str, Any] = {
            "hosts": self.hosts,
            "connect_timeout": connect_ms,
            "send_bool_as": aerospike.AS_BOOL,
            "policies": {
                "login_timeout_ms": connect_ms,
                "read": dict(timing),
                "batch": dict(timing),
                "write": {**timing, "key": aerospike.POLICY_KEY_SEND},
                "remove": dict(timing),
                "info": {"timeout": total_ms},
            },
        }
        if self._tls_name or self._tls_cafile:
            tls: dict[str, Any] = {"enable": True}
            if self._tls_cafile:
                tls["cafile"] = str(self._tls_cafile)
            config["tls"] = tls
        if self._user:
            config["user"] = self._user
            config["password"] = self._password or ""
        return config

    # -- connection (runs in the client threads) ---------------------------------------

    def _connected_client(self) -> aerospike.Client:
        with self._connect_lock:
            client = self._client
            if client is not None and client.is_connected():
                return client
            if client is not None:
                self._close_quietly(client)
                self._client = None
            now = self._clock()
            if self._failed_at is not None and now - self._failed_at < self.reconnect_backoff:
                wait = self.reconnect_backoff - (now - self._failed_at)
                raise StoreUnavailable(f"{self._last_error} (next attempt in {wait:.1f}s)")
            try:
                # aerospike.client() connects (19.x): it raises when no seed answers.
                client = aerospike.client(self.client_config())
            except aerospike_errors.AerospikeError as exc:
                self._failed_at = self._clock()
                self._last_error = self._explain_connect(exc)
                log.warning("aerospike unreachable: %s", self._last_error)
                raise StoreUnavailable(self._last_error) from exc
            self._failed_at = None
            self._client = client
            log.info("aerospike connected", extra={"hosts": self.where})
            return client

    def _explain_connect(self, exc: Exception) -> str:
        if isinstance(exc, aerospike_errors.TimeoutError):
            cause = (
                f"no answer within the connect timeout of {self.connect_timeout:g}s "
                "(NEARLINE_AEROSPIKE_CONNECT_TIMEOUT)"
            )
        else:
            cause = _message(exc)
        return (
            f"cannot connect to Aerospike at {self.where}: {cause}; check "
            "NEARLINE_AEROSPIKE_HOSTS, that the server is running and the port is reachable"
            " (and NEARLINE_AEROSPIKE_TLS_* / _USER / _PASSWORD if the cluster needs them)"
        )

    def _explain(self, operation: str, exc: Exception) -> str:
        if isinstance(exc, aerospike_errors.TimeoutError):
            cause = (
                f"no answer within the total timeout of {self.total_timeout:g}s "
                "(NEARLINE_AEROSPIKE_TOTAL_TIMEOUT)"
            )
        elif isinstance(exc, aerospike_errors.NamespaceNotFound):
            cause = f"namespace {self.namespace!r} does not exist (NEARLINE_AEROSPIKE_NAMESPACE)"
        else:
            cause = _message(exc)
        return f"Aerospike at {self.where} failed {operation}: {cause}"

    def _run(self, operation: str, call: Callable[[aerospike.Client], T]) -> T:
        client = self._connected_client()
        try:
            return call(client)
        except aerospike_errors.AerospikeError as exc:
            if not client.is_connected():
                # The cluster is gone, not just slow: reconnect (after the backoff).
                with self._connect_lock:
                    if self._client is client:
                        self._client = None
                        self._failed_at = self._clock()
                        self._last_error = self._explain(operation, exc)
                self._close_quietly(client)
            raise StoreUnavailable(self._explain(operation, exc)) from exc

    @staticmethod
    def _close_quietly(client: aerospike.Client) -> None:
        try:
            client.close()
        except Exception:  # closing a half-dead client must not hide the real error
            log.debug("closing the aerospike client failed", exc_info=True)

    async def _call(self, operation: str, call: Callable[[aerospike.Client], T]) -> T:
        executor = self._executor
        if executor is None:
            raise StoreUnavailable(f"the Aerospike attribute store ({self.where}) is closed")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor, self._run, operation, call)
        try:
            return await asyncio.wait_for(future, self._guard)
        except TimeoutError:
            raise StoreUnavailable(
                f"Aerospike at {self.where} did not answer {operation} within {self._guard:g}s"
            ) from None

    # -- the store ---------------------------------------------------------------------

    def _key(self, kind: Kind, record_id: str) -> tuple[str, str, str]:
        return (self.namespace, self.sets[kind], record_id)

    async def _get_many(self, ids: list[str], kind: Kind) -> dict[str, AttributeRecord]:
        keys = [self._key(kind, record_id) for record_id in ids]
        batch = await self._call("a batch read", lambda client: client.batch_read(keys))
        found: dict[str, AttributeRecord] = {}
        failed = []
        # Batch results come back in the order of the keys asked for.
        for record_id, result in zip(ids, batch.batch_records, strict=True):
            if result.result == _RESULT_OK and result.record is not None:
                found[record_id] = record_from_bins(kind, result.record[2])
            elif result.result != _RESULT_NOT_FOUND:
                failed.append(record_id)
        if failed and not found and len(failed) == len(ids):
            raise StoreUnavailable(
                f"Aerospike at {self.where} answered no key of a batch read "
                f"(result code {batch.batch_records[0].result})"
            )
        if failed:
            # Some nodes answered: serve what arrived, the rest reads as missing.
            log.warning("aerospike batch read partly failed", extra={"failed": len(failed)})
        return found

    async def _put_many(self, records: Mapping[Kind, Sequence[AttributeRecord]]) -> None:
        policy = {
            "exists": aerospike.POLICY_EXISTS_CREATE_OR_REPLACE,
            "key": aerospike.POLICY_KEY_SEND,
        }
        writes = [
            Write(
                self._key(kind, record.id),
                [operations.write(name, value) for name, value in record_to_bins(record).items()],
                policy=policy,
            )
            for kind, group in records.items()
            for record in group
        ]
        batch = await self._call(
            "a batch write", lambda client: client.batch_write(BatchRecords(writes))
        )
        self._raise_for_failures("batch write", batch.batch_records, ok={_RESULT_OK})

    async def _delete_many(self, ids: list[str], kind: Kind) -> None:
        keys = [self._key(kind, record_id) for record_id in ids]
        batch = await self._call("a batch delete", lambda client: client.batch_remove(keys))
        self._raise_for_failures(
            "batch delete", batch.batch_records, ok={_RESULT_OK, _RESULT_NOT_FOUND}
        )

    def _raise_for_failures(self, operation: str, results: Sequence[Any], ok: set[int]) -> None:
        # Aerospike writes each record atomically but not the batch: report what failed so
        # the caller retries the batch (upserts and deletes are idempotent).
        failed = [result for result in results if result.result not in ok]
        if failed:
            first = failed[0]
            raise StoreUnavailable(
                f"Aerospike at {self.where}: {len(failed)} of {len(results)} records of a "
                f"{operation} failed (first: key {first.key[2]!r}, result code {first.result}); "
                "the batch is safe to retry"
            )

    async def health(self) -> StoreHealth:
        try:
            answer = await self._call(
                "a health check", lambda client: client.info_random_node("namespaces")
            )
        except StoreUnavailable as exc:
            return StoreHealth(False, self.backend, str(exc))
        # The answer looks like "namespaces\tns1;ns2\n".
        namespaces = answer.partition("\t")[2].strip().split(";")
        if self.namespace not in namespaces:
            return StoreHealth(
                False,
                self.backend,
                f"{self.where} has no namespace {self.namespace!r} "
                f"(has: {', '.join(namespaces)}); set NEARLINE_AEROSPIKE_NAMESPACE",
            )
        return StoreHealth(True, self.backend, f"{self.where}, namespace {self.namespace!r}")

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        with self._connect_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_quietly, client)
        executor.shutdown(wait=False, cancel_futures=True)


def _message(exc: Exception) -> str:
    # Client errors carry (code, message, file, line, in_doubt) in args; keep the message.
    text = getattr(exc, "msg", None) or (exc.args[1] if len(exc.args) > 1 else str(exc))
    return f"{type(exc).__name__}: {text}"
