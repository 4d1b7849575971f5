"""The model formats the server loads, one module each, tried in this order on a version folder."""

from __future__ import annotations

from pathlib import Path

from server.models.backend import ModelBackend
from server.models.backends.keras import KerasBackend
from server.models.backends.savedmodel import SavedModelBackend

BACKENDS: tuple[ModelBackend, ...] = (SavedModelBackend(), KerasBackend())


def backend_for(version_dir: Path) -> ModelBackend | None:
    """The backend whose files the folder holds (None: no format the server knows)."""
    return next((backend for backend in BACKENDS if backend.detect(version_dir)), None)


def known_formats() -> str:
    """'a TensorFlow SavedModel (saved_model.pb) or a Keras 3 model (model.keras)', for messages."""
    return " or ".join(backend.describe() for backend in BACKENDS)
