"""How the Aerospike backend maps records to bins and settings to the client's config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aerospike
import pytest

from nearline.app.compose import attribute_store
from nearline.attribute_store import EmbeddedAttributeStore, ItemAttributes
from nearline.attribute_store.aerospike import (
    AerospikeAttributeStore,
    parse_host,
    record_from_bins,
    record_to_bins,
)
from nearline.foundation.settings import load_settings
from tests.unit.attribute_store.conftest import item, member


@pytest.mark.parametrize(
    ("spec", "tls_name", "expected"),
    [
        ("db1", None, ("db1", 3000)),
        ("db1:4333", None, ("db1", 4333)),
        ("[::1]:3100", None, ("::1", 3100)),
        ("db1:4333", "cluster-a", ("db1", 4333, "cluster-a")),
    ],
)
def test_hosts_are_parsed(spec: str, tls_name: str | None, expected: tuple[object, ...]) -> None:
    assert parse_host(spec, tls_name) == expected


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(ValueError, match="port must be a number"):
        parse_host("db1:http")


def test_item_bins_are_id_embedding_geo_attrs_and_round_trip() -> None:
    record = item("i1", remote=True)
    bins = record_to_bins(record)
    assert set(bins) == {"id", "embedding", "geo", "attrs"}
    assert bins["geo"] == {"lat": 52.52, "lon": 13.405, "region": "Berlin"}
    assert record_from_bins("items", bins) == record


def test_absent_parts_have_no_bin() -> None:
    bins = record_to_bins(ItemAttributes("i2"))
    assert bins == {"id": "i2"}
    assert record_from_bins("items", bins) == ItemAttributes("i2")


def test_member_bins_round_trip() -> None:
    record = member("m1", industry="it")
    assert record_to_bins(record) == {"id": "m1", "attrs": record.attributes}
    assert record_from_bins("members", record_to_bins(record)) == record


def test_settings_become_timeouts_retries_tls_and_credentials(tmp_path: Path) -> None:
    cafile = tmp_path / "ca.pem"
    settings = load_settings(
        attribute_store="aerospike",
        aerospike_hosts="db1:4333,db2",
        aerospike_namespace="prod",
        aerospike_set_items="jobs",
        aerospike_user="nearline",
        aerospike_password="secret",
        aerospike_tls_name="cluster-a",
        aerospike_tls_cafile=str(cafile),
        aerospike_connect_timeout="2s",
        aerospike_total_timeout="300ms",
        aerospike_retries=2,
    )
    store = attribute_store(settings)
    assert isinstance(store, AerospikeAttributeStore)
    assert store.sets == {"items": "jobs", "members": "members"}
    config = store.client_config()
    assert config["hosts"] == [("db1", 4333, "cluster-a"), ("db2", 3000, "cluster-a")]
    assert config["connect_timeout"] == 2000
    assert config["tls"] == {"enable": True, "cafile": str(cafile)}
    assert (config["user"], config["password"]) == ("nearline", "secret")
    read = config["policies"]["batch"]
    # Three tries (two retries) share the total timeout.
    assert read == {"total_timeout": 300, "socket_timeout": 100, "max_retries": 2}
    assert config["policies"]["write"]["key"] == aerospike.POLICY_KEY_SEND
    assert config["send_bool_as"] == aerospike.AS_BOOL


def test_without_tls_or_user_the_config_has_neither() -> None:
    config = AerospikeAttributeStore(["db1"], namespace="n").client_config()
    assert "tls" not in config and "user" not in config


def test_the_store_defaults_to_the_embedded_one_in_the_data_dir(tmp_path: Path) -> None:
    store = attribute_store(load_settings(data_dir=str(tmp_path)))
    try:
        assert isinstance(store, EmbeddedAttributeStore)
        assert store.path == tmp_path / "attributes"
    finally:
        asyncio.run(store.close())
