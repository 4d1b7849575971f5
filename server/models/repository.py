"""The model repository: MODEL_DIR/<name>/<version>/ SavedModels (TF-Serving layout).

Every model directory's highest numeric version that holds a `saved_model.pb`
is loaded and served. Other entries (sample files, `labels.txt`,
`serving.json`) are ignored.

With `poll_seconds` > 0 (MODEL_POLL_SECONDS) a thread looks at the directory
again at that interval, as TF Serving's file-system polling does: a new
newest version (or a new model) is loaded and warmed up while the current one
keeps serving, then takes over; the version it replaced, or a model whose
directory is gone, is unloaded `retire_seconds` later, once calls that already
hold it are done. A version that fails to load is logged and skipped until
its files change; the version being served stays.
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


def files_signature(path: Path) -> tuple[int, float]:
    """(file count, newest modification time) of a version directory: changes when its files do."""
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return len(stats), max((st.st_mtime for st in stats), default=0.0)


class ModelRepository:
    """Loads the models of a directory and finds them by name and version."""

    def __init__(
        self,
        model_dir: Path,
        device: str,
        batching: BatchingConfig,
        poll_seconds: float = 0.0,
        retire_seconds: float = 10.0,
    ) -> None:
        self.model_dir = model_dir
        self.device = device
        self.batching = batching
        self.poll_seconds = poll_seconds
        self.retire_seconds = retire_seconds
        self.versions: dict[str, list[int]] = {}
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self._failed: dict[tuple[str, int], tuple[int, float]] = {}  # version -> files when it failed
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._retiring: list[tuple[threading.Timer, LoadedModel]] = []

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

    def start_polling(self) -> None:
        """Watch the directory for new versions every `poll_seconds` (no-op when 0)."""
        if self.poll_seconds > 0 and self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._poller.start()
            log.info("watching %s for new model versions every %gs", self.model_dir, self.poll_seconds)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:
                log.exception("model repository poll failed")

    def poll_once(self) -> None:
        """Serve the newest version of every model found now; unload what is gone."""
        found = find_versions(self.model_dir)
        for name, versions in found.items():
            if self._stop.is_set():
                return
            current = self._models.get(name)
            if current is None or current.version != versions[0]:
                self._load_new(name, versions[0], current)
        for name in [n for n in self._models if n not in found]:
            with self._lock:
                model = self._models.pop(name)
            log.info("model %s: its directory is gone; unloading version %d", name, model.version)
            self._retire(model)
        with self._lock:
            self.versions = {name: found.get(name, [m.version]) for name, m in self._models.items()}

    def _load_new(self, name: str, version: int, current: LoadedModel | None) -> None:
        path = self.model_dir / name / str(version)
        signature = files_signature(path)
        if self._failed.get((name, version)) == signature:
            return  # failed before and its files have not changed since
        try:
            model = load_model(name, version, path, self.device, self.batching)
        except Exception as exc:
            self._failed[(name, version)] = signature
            serving = f"; still serving version {current.version}" if current is not None else ""
            log.error("model %s: version %d failed to load (%s: %s)%s", name, version, type(exc).__name__, exc, serving)
            return
        self._failed.pop((name, version), None)
        with self._lock:
            self._models[name] = model
        if current is None:
            log.info("model %s: version %d loaded and serving", name, version)
        else:
            log.info("model %s: version %d now serving instead of version %d", name, version, current.version)
            self._retire(current)

    def _retire(self, model: LoadedModel) -> None:
        """Unload a model no longer served, after calls that already hold it had time to finish."""
        timer = threading.Timer(self.retire_seconds, model.close)
        timer.daemon = True
        timer.start()
        self._retiring = [(t, m) for t, m in self._retiring if t.is_alive()] + [(timer, model)]

    def close(self, drain: bool = True) -> None:
        """Stop polling and unload every model, including those being retired."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        for timer, model in self._retiring:
            timer.cancel()
            model.close(drain=drain)
        for model in self.models():
            model.close(drain=drain)
