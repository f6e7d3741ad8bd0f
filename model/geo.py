"""Distances on the globe, and geo attributes read as the vectorizer needs them.

The vectorizer measures a candidate's distance to the member's nearest recently engaged
(or home) location; the simulator measures distances with :func:`haversine_km` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nearline.model.values import numbers

__all__ = [
    "coordinates",
    "geo_point",
    "haversine_km",
    "nearest_km",
    "nearest_unit_km",
    "unit_sphere",
]

_EARTH_RADIUS_KM = 6371.0088


def haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in km between broadcastable arrays of degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat = p2 - p1
    dlon = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def unit_sphere(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Positions ``[..., 3]`` on the unit sphere of arrays of degrees."""
    phi, lam = np.radians(lat), np.radians(lon)
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)], axis=-1)


def nearest_km(
    lat: np.ndarray, lon: np.ndarray, point_lat: np.ndarray, point_lon: np.ndarray
) -> np.ndarray:
    """Great-circle km from each (lat, lon) to the nearest of the points.

    Works on 3-D unit vectors: the nearest point is the largest dot product, so the
    trigonometry runs once per candidate instead of once per candidate x point.
    """
    return nearest_unit_km(unit_sphere(lat, lon), unit_sphere(point_lat, point_lon))


def nearest_unit_km(positions: np.ndarray, points: np.ndarray) -> np.ndarray:
    """:func:`nearest_km` on unit-sphere positions ``[n, 3]`` and points ``[k, 3]``."""
    dots = (points @ positions.T).max(axis=0)
    chord = np.sqrt(np.clip(2.0 - 2.0 * dots, 0.0, 4.0))
    return 2 * _EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


def geo_point(value: Any) -> tuple[float, float, str | None] | None:
    """Latitude, longitude and region of one geo attribute; ``None`` if it has no valid
    coordinates."""
    # Exact class checks, not isinstance(Mapping): attributes come from a JSON decoder, and
    # the ABC check is several times slower in this per-candidate path.
    if value.__class__ is not dict:
        return None
    lat, lon = value.get("lat"), value.get("lon")
    if lat.__class__ not in (int, float) or lon.__class__ not in (int, float):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 360.0):
        return None  # also rejects NaN, which compares false
    region = value.get("region")
    return float(lat), float(lon), region if region.__class__ is str else None


def coordinates(geos: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes (NaN where absent or out of range) of candidate geo dicts."""
    lat = numbers([g.get("lat") if g.__class__ is dict else None for g in geos])
    lon = numbers([g.get("lon") if g.__class__ is dict else None for g in geos])
    bad = np.isnan(lat) | np.isnan(lon) | (np.abs(lat) > 90.0) | (np.abs(lon) > 360.0)
    lat[bad] = np.nan
    lon[bad] = np.nan
    return lat, lon
