"""Errors raised by the model package, each with a message that says what to fix."""

from __future__ import annotations

__all__ = ["ExamplesError", "IncompatibleModelError", "ModelError", "ModelFileError"]


class ModelError(Exception):
    """Base class of every error the model package raises on purpose."""


class IncompatibleModelError(ModelError):
    """A model file was trained on other features than the running vectorizer produces."""


class ModelFileError(ModelError):
    """A model file or its metadata is missing, unreadable or malformed."""


class ExamplesError(ModelError):
    """A training-examples file does not have the expected schema or content."""
