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
import time
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


RETRY_FAILED_SECONDS = 300.0  # a version that failed to load is tried again after this, or when its files change


def files_signature(path: Path) -> tuple[int, float] | None:
    """(file count, newest modification time) of a version directory: changes when its files do.

    None when the directory changes while it is read (files copied in or removed).
    """
    try:
        stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    except OSError:
        return None
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
        # (name, version) -> (its files, time.monotonic()) when it failed to load
        self._failed: dict[tuple[str, int], tuple[tuple[int, float] | None, float]] = {}
        self._missing: dict[str, int] = {}  # served model -> polls in a row that did not find it
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._retiring: dict[int, tuple[threading.Timer, LoadedModel]] = {}

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

    def versions_of(self, model: LoadedModel) -> list[int]:
        """The versions found on disk for a model, newest first (at least the one served)."""
        return self.versions.get(model.name) or [model.version]

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
        """Serve the newest version of every model found now; unload what stays gone."""
        found = find_versions(self.model_dir)
        if not found:  # an unmounted or half-replaced volume: keep serving what is loaded
            log.warning("no models in %s at this poll; keeping the loaded ones", self.model_dir)
            return
        for name, versions in found.items():
            if self._stop.is_set():
                return
            self._missing.pop(name, None)
            current = self._models.get(name)
            if current is None or current.version != versions[0]:
                self._load_new(name, versions[0], current, versions)
        for name in [n for n in self._models if n not in found]:
            self._missing[name] = self._missing.get(name, 0) + 1
            if self._missing[name] < 2:  # absent twice in a row before it is unloaded
                continue
            with self._lock:
                model = self._models.pop(name)
                self.versions.pop(name, None)
            del self._missing[name]
            log.info("model %s: its directory is gone; unloading version %d", name, model.version)
            self._retire(model)
        with self._lock:
            for name, model in self._models.items():
                self.versions[name] = found.get(name, self.versions.get(name, [model.version]))

    def _load_new(self, name: str, version: int, current: LoadedModel | None, versions: list[int]) -> None:
        path = self.model_dir / name / str(version)
        signature = files_signature(path)
        failed = self._failed.get((name, version))
        if failed is not None and failed[0] == signature and time.monotonic() < failed[1] + RETRY_FAILED_SECONDS:
            return  # failed before, and its files have not changed since
        try:
            model = load_model(name, version, path, self.device, self.batching)
        except Exception as exc:
            self._failed[(name, version)] = (signature, time.monotonic())
            serving = f"; still serving version {current.version}" if current is not None else ""
            log.error("model %s: version %d failed to load (%s: %s)%s", name, version, type(exc).__name__, exc, serving)
            return
        self._failed.pop((name, version), None)
        if self._stop.is_set():  # shutting down while it loaded
            model.close(drain=False)
            return
        with self._lock:
            self._models[name] = model
            self.versions[name] = versions
        if current is None:
            log.info("model %s: version %d loaded and serving", name, version)
        else:
            log.info("model %s: version %d now serving instead of version %d", name, version, current.version)
            self._retire(current)

    def _retire(self, model: LoadedModel) -> None:
        """Unload a model no longer served, after calls that already hold it had time to finish."""

        def unload() -> None:
            model.close()
            with self._lock:
                self._retiring.pop(id(model), None)  # let its memory go

        timer = threading.Timer(self.retire_seconds, unload)
        timer.daemon = True
        with self._lock:
            self._retiring[id(model)] = (timer, model)
        timer.start()

    def close(self, drain: bool = True) -> None:
        """Stop polling and unload every model, including those being retired."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=60)  # a load in progress finishes first
        with self._lock:
            retiring = list(self._retiring.values())
            self._retiring.clear()
        for timer, model in retiring:
            timer.cancel()
            model.close(drain=drain)
        for model in self.models():
            model.close(drain=drain)
