"""The per-candidate half of the vectorizer's work, as parallel arrays.

A candidate's unit embedding, position on the globe, codes of category, company and region,
and popularity do not depend on the member. Serving computes them once per item
(:mod:`nearline.model.item_rows`) and gathers them per request, so a request does numpy
work on arrays, not Python work per candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nearline.model.embeddings import embedding_matrix
from nearline.model.geo import coordinates, unit_sphere
from nearline.model.values import numbers
from nearline.model.vocabulary import Vocabulary

__all__ = ["CandidateRows"]

#: The array fields of :class:`CandidateRows`, in declaration order.
_ROW_ARRAYS = (
    "unknown",
    "unit",
    "embedding_ok",
    "xyz",
    "has_geo",
    "region",
    "category",
    "company",
    "log_popularity",
)
_EMPTY: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class CandidateRows:
    """What the vectorizer needs of each candidate, as parallel arrays (one entry each).

    Made from attribute dicts by :meth:`of`; the codes are those of ``vocabulary``.
    """

    item_ids: Sequence[str]
    vocabulary: Vocabulary
    unknown: np.ndarray  # bool: no attributes at all
    unit: np.ndarray  # float32 [n, dim]: unit-length embedding, zeros where unusable
    embedding_ok: np.ndarray  # bool: the embedding was usable
    xyz: np.ndarray  # float64 [n, 3]: position on the unit sphere, zeros where no geo
    has_geo: np.ndarray  # bool: valid coordinates
    region: np.ndarray  # int32 code of geo.region, -1 if none
    category: np.ndarray  # int32 code, -1 if not a string
    company: np.ndarray  # int32 code, -1 if not a string
    log_popularity: np.ndarray  # float32 log1p(max(popularity, 0)), NaN if absent

    @classmethod
    def of(
        cls,
        item_ids: Sequence[str],
        attributes: Sequence[Mapping[str, Any] | None],
        vocabulary: Vocabulary,
        embedding_dim: int,
    ) -> CandidateRows:
        """The rows of candidates' attribute dicts, codes added to ``vocabulary``.

        A candidate without attributes (``None`` or ``{}``) is unknown. Column by column
        with comprehensions: an explicit loop with branches costs several times more.
        """
        n = len(item_ids)
        rows = [attrs or _EMPTY for attrs in attributes]
        # One pass with all lookups, transposed by zip: cheaper than a pass per attribute.
        categories, companies, geos, embeddings, popularity = (
            zip(
                *[
                    (
                        attrs.get("category"),
                        attrs.get("company"),
                        attrs.get("geo"),
                        attrs.get("embedding"),
                        attrs.get("popularity"),
                    )
                    for attrs in rows
                ],
                strict=True,
            )
            if n
            else ((), (), (), (), ())
        )
        unit, embedding_ok = embedding_matrix(embeddings, embedding_dim)
        lat, lon = coordinates(geos)
        has_geo = ~np.isnan(lat)
        xyz = np.zeros((n, 3), dtype=np.float64)
        xyz[has_geo] = unit_sphere(lat[has_geo], lon[has_geo])
        pop = numbers(list(popularity))
        has_popularity = ~np.isnan(pop)
        log_popularity = np.full(n, np.nan, dtype=np.float32)
        log_popularity[has_popularity] = np.log1p(np.maximum(pop[has_popularity], 0.0))
        return cls(
            item_ids=item_ids,
            vocabulary=vocabulary,
            unknown=_flags(attrs is _EMPTY for attrs in rows),
            unit=unit,
            embedding_ok=embedding_ok,
            xyz=xyz,
            has_geo=has_geo,
            region=vocabulary.encode(
                g.get("region") if g.__class__ is dict else None for g in geos
            ),
            category=vocabulary.encode(categories),
            company=vocabulary.encode(companies),
            log_popularity=log_popularity,
        )

    def __len__(self) -> int:
        return len(self.unknown)

    def take(self, index: np.ndarray, item_ids: Sequence[str]) -> CandidateRows:
        """The rows at ``index`` (copies), named ``item_ids``."""
        # ndarray.take: several times faster than fancy indexing for the 2-D arrays.
        arrays = {name: getattr(self, name).take(index, axis=0) for name in _ROW_ARRAYS}
        return CandidateRows(item_ids=item_ids, vocabulary=self.vocabulary, **arrays)

    def put(self, index: np.ndarray | Sequence[int], rows: CandidateRows) -> None:
        """Overwrite the rows at ``index`` (distinct positions) with ``rows``, in place."""
        if rows.vocabulary is not self.vocabulary:
            raise ValueError("rows coded with another vocabulary")
        for name in _ROW_ARRAYS:
            getattr(self, name)[index] = getattr(rows, name)

    def resized(self, size: int) -> CandidateRows:
        """A copy with ``size`` rows: the first ones kept, new ones as an unknown item's."""
        keep = min(size, len(self))
        arrays = {}
        for name in _ROW_ARRAYS:
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
            new[:keep] = old[:keep]
            arrays[name] = new
        arrays["unknown"][keep:] = True
        arrays["region"][keep:] = -1
        arrays["category"][keep:] = -1
        arrays["company"][keep:] = -1
        arrays["log_popularity"][keep:] = np.nan
        return CandidateRows(item_ids=(), vocabulary=self.vocabulary, **arrays)


def _flags(values: Iterable[bool]) -> np.ndarray:
    return np.fromiter(values, dtype=bool)
