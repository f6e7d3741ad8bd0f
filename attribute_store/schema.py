"""Item and member attribute records: validation where they enter, one bytes encoding."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

from nearline.attribute_store.exceptions import InvalidRecord
from nearline.foundation import codec, limits

__all__ = [
    "KINDS",
    "MAX_ID_LENGTH",
    "AttributeRecord",
    "Geo",
    "ItemAttributes",
    "Kind",
    "MemberAttributes",
    "Scalar",
    "decode_record",
    "encode_record",
    "validate_item",
    "validate_member",
    "validate_record",
]

Scalar: TypeAlias = str | int | float | bool
#: The two sets (Aerospike) or column families (RocksDB) of the store.
Kind: TypeAlias = Literal["items", "members"]
KINDS: tuple[Kind, ...] = ("items", "members")
MAX_ID_LENGTH = limits.MAX_ID_LENGTH

_ITEM_FIELDS = frozenset({"item_id", "embedding", "geo", "attributes"})
_MEMBER_FIELDS = frozenset({"member_id", "attributes"})
_GEO_FIELDS = ("lat", "lon", "region")


@dataclass(frozen=True, slots=True)
class Geo:
    """Where an item is: coordinates, a region name, or both."""

    lat: float | None = None
    lon: float | None = None
    region: str | None = None

    def as_dict(self) -> dict[str, float | str]:
        """Only the parts that are set, so a consumer never sees ``null`` coordinates."""
        out: dict[str, float | str] = {}
        if self.lat is not None and self.lon is not None:
            out["lat"] = self.lat
            out["lon"] = self.lon
        if self.region is not None:
            out["region"] = self.region
        return out


@dataclass(frozen=True, slots=True)
class ItemAttributes:
    """What the store knows about an item (a job, a post).

    Records are shared between callers (the cache hands out the same object), so treat
    them, including the ``embedding`` list, as read-only.
    """

    kind: ClassVar[Kind] = "items"

    item_id: str
    embedding: list[float] | None = None
    geo: Geo | None = None
    attributes: dict[str, Scalar] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.item_id

    def as_flat_dict(self) -> dict[str, Any]:
        """``{"embedding": [...], "geo": {...}, "category": ...}``: every attribute by name.

        Absent parts are left out, so ``name in flat`` is the test for "this item has it".
        """
        flat: dict[str, Any] = {}
        if self.embedding is not None:
            flat["embedding"] = self.embedding
        if self.geo is not None:
            flat["geo"] = self.geo.as_dict()
        flat.update(self.attributes)
        return flat

    def to_dict(self) -> dict[str, Any]:
        """The stored form, accepted back by :func:`validate_item`."""
        out: dict[str, Any] = {"item_id": self.item_id}
        if self.embedding is not None:
            out["embedding"] = self.embedding
        if self.geo is not None:
            out["geo"] = self.geo.as_dict()
        if self.attributes:
            out["attributes"] = self.attributes
        return out


@dataclass(frozen=True, slots=True)
class MemberAttributes:
    """Static attributes of a member (seniority, industry…) for offline features."""

    kind: ClassVar[Kind] = "members"

    member_id: str
    attributes: dict[str, Scalar] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.member_id

    def as_flat_dict(self) -> dict[str, Any]:
        return dict(self.attributes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"member_id": self.member_id}
        if self.attributes:
            out["attributes"] = self.attributes
        return out


AttributeRecord: TypeAlias = ItemAttributes | MemberAttributes


# -- validation ---------------------------------------------------------------------------


def validate_item(raw: Mapping[str, Any], embedding_dim: int) -> ItemAttributes:
    """An :class:`ItemAttributes` from a decoded JSON object or a file row.

    Categorical attributes may be nested under ``"attributes"`` or given at the top level
    next to ``item_id`` (the natural shape of a CSV row); both end up in ``attributes``.
    Raises :class:`InvalidRecord` naming the first problem found.
    """
    if not isinstance(raw, Mapping):
        raise InvalidRecord(f"a record must be a JSON object, got {_type_name(raw)}")
    item_id = _valid_id(raw.get("item_id"), "item_id")
    embedding = _valid_embedding(raw.get("embedding"), embedding_dim)
    geo = _valid_geo(raw.get("geo"))
    attributes = _valid_attributes(raw, _ITEM_FIELDS)
    return ItemAttributes(item_id, embedding, geo, attributes)


def validate_member(raw: Mapping[str, Any]) -> MemberAttributes:
    """A :class:`MemberAttributes` from a decoded JSON object or a file row."""
    if not isinstance(raw, Mapping):
        raise InvalidRecord(f"a record must be a JSON object, got {_type_name(raw)}")
    member_id = _valid_id(raw.get("member_id"), "member_id")
    return MemberAttributes(member_id, _valid_attributes(raw, _MEMBER_FIELDS))


def validate_record(kind: Kind, raw: Mapping[str, Any], embedding_dim: int) -> AttributeRecord:
    """:func:`validate_item` or :func:`validate_member`, chosen by ``kind``."""
    if kind == "items":
        return validate_item(raw, embedding_dim)
    return validate_member(raw)


def _valid_id(value: Any, name: str) -> str:
    if value is None:
        raise InvalidRecord(f"{name} is missing")
    # Parquet and JSON files often carry numeric ids; they mean the same item as "123".
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} must be a string, got {_type_name(value)}")
    value = value.strip()
    if not value:
        raise InvalidRecord(f"{name} is empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRecord(f"{name} is longer than {MAX_ID_LENGTH} characters")
    return value


def _valid_embedding(value: Any, dim: int) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise InvalidRecord(f"embedding must be a list of numbers, got {_type_name(value)}")
    if len(value) != dim:
        raise InvalidRecord(f"embedding has dimension {len(value)}, expected {dim}")
    out: list[float] = []
    for index, number in enumerate(value):
        # bool is an int in Python, and a string of digits is not a number here.
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise InvalidRecord(f"embedding[{index}] is not a number: {number!r}")
        number = float(number)
        if not math.isfinite(number):
            raise InvalidRecord(f"embedding[{index}] is {number} (must be finite)")
        out.append(number)
    return out


def _valid_geo(value: Any) -> Geo | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRecord(f"geo must be an object with lat, lon, region; got {_type_name(value)}")
    unknown = sorted(set(value) - set(_GEO_FIELDS))
    if unknown:
        raise InvalidRecord(f"geo has unknown field {unknown[0]!r}; expected lat, lon, region")
    lat = _valid_coordinate(value.get("lat"), "geo.lat", 90.0)
    lon = _valid_coordinate(value.get("lon"), "geo.lon", 180.0)
    if (lat is None) != (lon is None):
        raise InvalidRecord("geo needs both lat and lon, or neither")
    region = value.get("region")
    if region is not None and (not isinstance(region, str) or not region.strip()):
        raise InvalidRecord("geo.region must be a non-empty string")
    if lat is None and region is None:
        raise InvalidRecord("geo needs lat and lon, a region, or both")
    return Geo(lat, lon, region.strip() if region is not None else None)


def _valid_coordinate(value: Any, name: str, limit: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecord(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not -limit <= number <= limit:
        raise InvalidRecord(f"{name} is {value!r}, outside [-{limit:g}, {limit:g}]")
    return number


def _valid_attributes(raw: Mapping[str, Any], reserved: frozenset[str]) -> dict[str, Scalar]:
    nested = raw.get("attributes")
    if nested is not None and not isinstance(nested, Mapping):
        raise InvalidRecord(f"attributes must be an object, got {_type_name(nested)}")
    top_level = {key: value for key, value in raw.items() if key not in reserved}
    out: dict[str, Scalar] = {}
    for source in (top_level, nested or {}):
        for name, value in source.items():
            if not isinstance(name, str) or not name:
                raise InvalidRecord(f"attribute name {name!r} must be a non-empty string")
            if name in reserved:
                # as_flat_dict() puts attributes next to embedding and geo: no shadowing.
                raise InvalidRecord(f"attribute name {name!r} is reserved")
            if value is None:
                continue  # an empty CSV cell or a Parquet null: the item has no such value
            if name in out:
                raise InvalidRecord(f"attribute {name!r} is given twice")
            out[name] = _valid_scalar(name, value)
    return out


def _valid_scalar(name: str, value: Any) -> Scalar:
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRecord(f"attribute {name!r} is {value} (must be finite)")
        return value
    raise InvalidRecord(
        f"attribute {name!r} must be a string, number or boolean, got {_type_name(value)}"
    )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- encoding ------------------------------------------------------------------------------


def encode_record(record: AttributeRecord) -> bytes:
    """The stored bytes of a record: its :meth:`to_dict` through the one JSON codec."""
    return codec.dumps(record.to_dict())


def decode_record(kind: Kind, data: bytes) -> AttributeRecord:
    """The record that :func:`encode_record` wrote; trusted, since it was validated then."""
    raw = codec.loads(data)
    if kind == "items":
        geo = raw.get("geo")
        return ItemAttributes(
            raw["item_id"],
            raw.get("embedding"),
            Geo(geo.get("lat"), geo.get("lon"), geo.get("region")) if geo else None,
            raw.get("attributes") or {},
        )
    return MemberAttributes(raw["member_id"], raw.get("attributes") or {})
