"""The model repository: MODEL_DIR/<name>/<version>/ SavedModels (TF-Serving layout).

Every model directory's highest numeric version that holds a `saved_model.pb`
is loaded and served. Other entries (sample files, `labels.txt`,
`serving.json`) are ignored.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from server.batching import BatchingConfig
from server.errors import NotFound, Unavailable
from server.models.model import LoadedModel, load_model

log = logging.getLogger(__name__)


def find_versions(model_dir: Path) -> dict[str, list[int]]:
    """Model name -> available versions, newest first."""
    found: dict[str, list[int]] = {}
    if not model_dir.is_dir():
        return found
    for model_root in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        versions = [
            int(v.name)
            for v in model_root.iterdir()
            if v.is_dir() and v.name.isdigit() and (v / "saved_model.pb").is_file()
        ]
        if versions:
            found[model_root.name] = sorted(versions, reverse=True)
    return found


class ModelRepository:
    """Loads the models of a directory and finds them by name and version."""

    def __init__(self, model_dir: Path, device: str, batching: BatchingConfig) -> None:
        self.model_dir = model_dir
        self.device = device
        self.batching = batching
        self.versions: dict[str, list[int]] = {}
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def load_all(self) -> None:
        """Load the newest version of every model; raises if any fails or none exist."""
        self.versions = find_versions(self.model_dir)
        if not self.versions:
            raise RuntimeError(
                f"no models in {self.model_dir.resolve()}: expected <name>/<version>/saved_model.pb"
            )
        for name, versions in self.versions.items():
            model = load_model(name, versions[0], self.model_dir / name / str(versions[0]), self.device, self.batching)
            with self._lock:
                self._models[name] = model
        self.ready.set()

    def get(self, name: str, version: int = 0) -> LoadedModel:
        """The loaded model; NotFound for unknown names or versions not served."""
        model = self._models.get(name)
        if model is None:
            if not self.ready.is_set():
                raise Unavailable(f"models are still loading; model '{name}' cannot be served yet")
            known = ", ".join(f"'{n}'" for n in self.versions) or "none"
            raise NotFound(f"model '{name}' not found; available models: {known}")
        if version and version != model.version:
            raise NotFound(
                f"version {version} of model '{name}' is not served; served version: {model.version}"
            )
        return model

    def models(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def close(self, drain: bool = True) -> None:
        for model in self.models():
            model.close(drain=drain)
