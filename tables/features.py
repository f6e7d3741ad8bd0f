"""A member's served features: the online store's state, item attributes joined at read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nearline.attribute_store import (
    AttributeRecord,
    CachedAttributeStore,
    JoinFields,
    StoreUnavailable,
    item_ids,
    join_at_read,
)
from nearline.tables.online_store import OnlineStore

__all__ = ["FeatureReader"]

log = logging.getLogger(__name__)


@dataclass
class FeatureReader:
    """Reads a member's features from the partitions this worker owns."""

    store: OnlineStore
    attributes: CachedAttributeStore
    fields: JoinFields
    #: How long the read-time join may wait for the attribute store.
    timeout: float

    async def features(self, member_id: str, as_of: float) -> dict[str, Any]:
        """Features of a member this worker owns, attributes joined at read.

        Raises :class:`~nearline.tables.online_store.NotOwned` when another worker owns the member.
        An attribute store that does not answer in time leaves the actions unjoined and
        says so (``"attribute_store": "unavailable"``): features are served either way.
        """
        features = self.store.features(member_id, as_of)
        fields = self.fields
        actions = features["recent_actions"]
        if not actions or not (fields.read or fields.ingest):
            return features
        cached, missing = self.attributes.peek_many(item_ids(actions))
        records: Mapping[str, AttributeRecord] | None = cached
        if missing:
            try:
                cached.update(
                    await asyncio.wait_for(self.attributes.get_many(missing), self.timeout)
                )
            except (StoreUnavailable, TimeoutError) as exc:
                log.warning("attribute store unavailable at read: %s", exc)
                records = None
                features["attribute_store"] = "unavailable"
        # The actions are this read's own, made by the store for it: joined in place.
        features["recent_actions"] = join_at_read(
            actions, records, fields.read, catch_up=fields.ingest, in_place=True
        )
        return features
