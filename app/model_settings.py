"""The model's values from the application's settings.

The model layer takes plain values (:meth:`VectorizerConfig.for_actions`); the application,
which owns :class:`Settings`, unpacks them here for every command and process that
vectorizes, so the worker, the CLI and the simulator agree on the feature columns.
"""

from __future__ import annotations

from nearline.foundation.settings import Settings
from nearline.model.vectorizer import Vectorizer, VectorizerConfig

__all__ = ["vectorizer_from_settings"]


def vectorizer_from_settings(settings: Settings) -> Vectorizer:
    """The vectorizer of the configured windows, actions of interest, recency half-life
    (NEARLINE_MODEL_HALF_LIFE), short window and embedding size."""
    return Vectorizer(
        VectorizerConfig.for_actions(
            settings.window_names,
            settings.actions_of_interest,
            half_life_s=settings.model_half_life,
            short_window_s=settings.model_short_window,
            embedding_dim=settings.embedding_dim,
        )
    )
