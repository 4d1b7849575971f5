"""The model repository: MODEL_DIR/<name>/<version>/ folders (TF-Serving layout), in any known format.

Every model directory's highest numeric version that holds a format's files
(`saved_model.pb`, `model.keras`: `server.models.backends`) is loaded and served, or the
versions its `serving.json` "version_policy" names (`version_policy()`: the latest N, all, or specific ones, as in TF
Serving and Triton). Other entries (sample files, `labels.txt`) are ignored.

Model control (MODEL_CONTROL_MODE, as Triton's): "none" serves what is found at
start; "poll" also follows the directory (below); "explicit" loads only
`startup` models at start, and then what callers load (`load`) until they
unload it (`unload`). In "poll" mode callers may load and unload too: polling
never unloads a model a caller loaded, nor loads one a caller unloaded.

With `poll_seconds` > 0 (MODEL_POLL_SECONDS) a thread looks at the directory
again at that interval, as TF Serving's file-system polling does: a version
the policy wants (or a new model) is loaded and warmed up while the current one
keeps serving, then takes over; a version the policy no longer wants, or a
model whose directory is gone, is unloaded `retire_seconds` later, once calls
that already hold it are done. A version that fails to load is logged and
skipped until its files change; the versions being served stay.

The served versions of a model, the map of models and the versions found are
dicts replaced whole on every change (never changed in place), so readers
need no lock.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from server.batching import BatchingConfig
from server.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from server.memory import release_freed_memory
from server.models.backends import backend_for, known_formats
from server.models.model import LoadedModel, load_model, serving_config

log = logging.getLogger(__name__)


def find_versions(model_dir: Path) -> dict[str, list[int]]:
    """Model name -> available versions, newest first. A numbered version folder without the files
    of a known format (another format, or files still being copied) is logged once."""
    found: dict[str, list[int]] = {}
    if not model_dir.is_dir():
        return found
    for model_root in sorted(p for p in model_dir.iterdir() if p.is_dir()):
        try:
            numbered = [v for v in model_root.iterdir() if v.is_dir() and v.name.isascii() and v.name.isdigit()]
            versions = [int(v.name) for v in numbered if backend_for(v) is not None]
            unknown = [v for v in numbered if int(v.name) not in versions]
        except OSError:  # removed while listed, or unreadable: not a model now
            continue
        for folder in unknown:
            if folder not in _LOGGED_UNKNOWN:
                _LOGGED_UNKNOWN.add(folder)
                log.warning(
                    "%s: no saved_model.pb or model.keras, so not a version the server can load (expected %s); skipped",
                    folder,
                    known_formats(),
                )
        if versions:
            found[model_root.name] = sorted(versions, reverse=True)
    return found


_LOGGED_UNKNOWN: set[Path] = set()  # version folders of an unknown format, logged once


class LoadFailure(NamedTuple):
    """A version that failed to load: its files then (`files_signature`), when (monotonic), and why."""

    files: tuple[int, float] | None
    at: float
    reason: str


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters (TensorFlow's messages run long)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:300]


VersionPolicy = Callable[[list[int]], list[int]]  # versions found, newest first -> versions to serve


def version_policy(raw: object, where: str) -> VersionPolicy:
    """serving.json's "version_policy": "latest" (the default), {"latest": N}, "all" or {"specific": [v, ...]}."""
    if raw is None or raw == "latest":
        return lambda found: found[:1]
    if raw == "all":
        return lambda found: list(found)
    if isinstance(raw, dict) and len(raw) == 1:
        ((kind, value),) = raw.items()
        if kind == "latest" and isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return lambda found: found[:value]
        if (
            kind == "specific"
            and isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            wanted = set(value)
            return lambda found: [v for v in found if v in wanted]
    raise ValueError(
        f'{where}: version_policy must be "latest", "all", {{"latest": N}} (N >= 1) or '
        f'{{"specific": [versions]}}; got {json.dumps(raw)}'
    )


LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")  # a version label


def version_labels(raw: object, where: str) -> dict[str, int]:
    """serving.json's "version_labels": {"stable": 1, "canary": 2}, as TensorFlow Serving's model config has them."""
    if raw is None:
        return {}
    if isinstance(raw, dict) and all(
        isinstance(k, str) and LABEL.fullmatch(k) and isinstance(v, int) and not isinstance(v, bool) and v >= 1
        for k, v in raw.items()
    ):
        return dict(raw)
    raise ValueError(
        f'{where}: version_labels must map labels (a letter, then letters, digits, "_", "." or "-") to '
        f'versions (>= 1), e.g. {{"stable": 1, "canary": 2}}; got {json.dumps(raw)[:200]}'
    )


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
        strict: bool = False,
        control: str = "none",
        startup: tuple[str, ...] = (),
    ) -> None:
        self.model_dir = model_dir
        self.device = device
        self.batching = batching
        self.poll_seconds = poll_seconds
        self.retire_seconds = retire_seconds
        self.strict = strict  # a version that fails to load at start-up stops the start
        self.versions: dict[str, list[int]] = {}
        self._models: dict[str, dict[int, LoadedModel]] = {}  # name -> served versions (replaced, never mutated)
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self._failed: dict[tuple[str, int], LoadFailure] = {}  # versions that failed to load
        self._missing: dict[str, int] = {}  # served model -> polls in a row that did not find it
        self._policy_problems: dict[str, str] = {}  # model -> the last policy problem logged
        self._labels: dict[str, dict[str, int]] = {}  # model -> version label -> version (replaced whole)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._retiring: dict[int, tuple[threading.Timer, LoadedModel]] = {}
        self.control = control  # "none", "poll" or "explicit" (MODEL_CONTROL_MODE)
        self.startup = startup  # the models loaded at start in explicit mode ("*": all)
        self._changing = threading.RLock()  # one load, unload or poll at a time
        self._loaded_by_call: set[str] = set()  # never unloaded by polling
        self._unloaded_by_call: set[str] = set()  # never loaded by polling
        self._overrides: dict[str, tuple[object, object]] = {}  # name -> (version policy, labels) of a reload
        self._policies: dict[str, object] = {}  # name -> the version policy in effect (serving.json's form)

    def load_all(self) -> None:
        """Load the versions each model's policy serves (the newest by default).

        A version that fails to load is logged with its model, version and path and left out: the other
        models serve, the failed one answers UNAVAILABLE and the repository index says why (polling
        tries it again when its files change). With `strict` (MODEL_LOAD_STRICT) any failure stops the
        start instead. Raises when no model exists or none could be loaded, and for an invalid
        serving.json.
        """
        self.versions = find_versions(self.model_dir)
        explicit = self.control == "explicit"
        if not self.versions and not explicit:
            raise RuntimeError(
                f"no models in {self.model_dir.resolve()}: expected <name>/<version>/ holding {known_formats()}"
            )
        starting = {n: v for n, v in self.versions.items() if not explicit or "*" in self.startup or n in self.startup}
        if explicit:
            missing = [n for n in self.startup if n != "*" and n not in self.versions]
            if missing:
                raise RuntimeError(
                    f"STARTUP_MODELS names models not in {self.model_dir.resolve()}: {', '.join(missing)}"
                )
        failures = []
        for name, versions in starting.items():
            wanted = self._wanted(name, versions, take_labels=True)
            if not wanted:
                raise RuntimeError(
                    f"model {name}: the version_policy in {self.model_dir / name / 'serving.json'} serves none of "
                    f"the versions found {versions}"
                )
            for version in wanted:
                path = self.model_dir / name / str(version)
                try:
                    model = load_model(name, version, path, self.device, self.batching)
                except Exception as exc:
                    if self.strict:
                        raise RuntimeError(
                            f"model {name}: version {version} ({path}) failed to load: {_first_line(exc)}"
                        ) from exc
                    reason = self._failed_to_load(name, version, files_signature(path), exc)
                    log.error(
                        "model %s: version %d (%s) failed to load (%s); the other models serve "
                        "(MODEL_LOAD_STRICT=true stops the start instead)",
                        name,
                        version,
                        path,
                        reason,
                    )
                    failures.append(f"{name} v{version}: {reason}")
                    continue
                self._set_served(name, {**self._models.get(name, {}), version: model})
        if not self._models and starting:
            raise RuntimeError("no model could be loaded: " + "; ".join(failures))
        self.ready.set()

    def load(self, name: str) -> list[LoadedModel]:
        """Serve a model of the directory (a caller's LoadModel): load the versions its policy wants that
        are not served, retire the others; the served versions, newest first. Polling will not unload it."""
        self.check_control("load")
        versions = find_versions(self.model_dir).get(_folder_name(name))
        if not versions:
            raise self._not_in_directory(name)
        with self._changing:
            self._load_locked(name, versions)
            return self.served(name)

    def reconfigure(self, wanted: dict[str, tuple[object, object]]) -> None:
        """Serve exactly these models (TF Serving's ReloadConfig), each with the given version policy and
        labels (serving.json's forms) in place of its serving.json's: the listed ones load first, then the
        others are unloaded. A listed model that fails to load stops it there (FailedPrecondition)."""
        self.check_control("reconfigure")
        found = find_versions(self.model_dir)
        for name, (policy, labels) in wanted.items():
            if name not in found:
                raise self._not_in_directory(_folder_name(name))
            try:
                serves = version_policy(policy, f"model '{name}'")(found[name])
                named = version_labels(labels, f"model '{name}'")
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
            for label, version in named.items():  # as TF Serving: a label names a version that will serve
                if version not in serves:
                    raise InvalidArgument(
                        f"model '{name}': version label '{label}' names version {version}, which "
                        f"its version policy does not serve (it serves {_versions(serves)})"
                    )
        with self._changing:
            self._overrides = dict(wanted)
            for name in wanted:
                self._load_locked(name, found[name])
            for name in [n for n in self._models if n not in wanted]:
                self._unload_locked(name)

    def _load_locked(self, name: str, versions: list[int]) -> None:
        self.versions = {**self.versions, name: versions}
        wanted, problem = self._policy(name, versions, take_labels=True)
        if problem:
            raise FailedPrecondition(f"model '{name}': {problem}")
        loaded: list[int] = []
        for version in wanted:
            if version not in self._models.get(name, {}):
                self._failed.pop((name, version), None)  # a caller asks again: try again now
                self._load_version(name, version)
                failure = self._failed.get((name, version))
                if failure is not None:
                    self._take_back(name, loaded)
                    raise FailedPrecondition(f"model '{name}': version {version} failed to load: {failure.reason}")
                loaded.append(version)
        self._loaded_by_call.add(name)
        self._unloaded_by_call.discard(name)
        self._retire_unwanted(name, wanted)

    def _take_back(self, name: str, versions: list[int]) -> None:
        """Stop serving the versions a failed load had loaded: a load serves all it asks for, or none of it."""
        served = self._models.get(name, {})
        with self._lock:
            kept = {v: m for v, m in served.items() if v not in versions}
            self._models = (
                {**self._models, name: kept} if kept else {n: m for n, m in self._models.items() if n != name}
            )
        for version in versions:
            self._retire(served[version])

    def _not_in_directory(self, name: str) -> NotFound:
        return NotFound(
            f"model '{name}' not found in {self.model_dir}: expected {self.model_dir}/{name}/<version>/ "
            f"holding {known_formats()}"
        )

    def unload(self, name: str) -> list[int]:
        """Stop serving every version of a model (a caller's UnloadModel); the versions unloaded. Calls
        that already hold a version finish first (it is closed `retire_seconds` later)."""
        self.check_control("unload")
        with self._changing:
            return self._unload_locked(_folder_name(name))

    def _unload_locked(self, name: str) -> list[int]:
        with self._lock:
            gone = self._models.get(name)
            if not gone:
                loaded = ", ".join(repr(n) for n in sorted(self._models)) or "none"
                raise NotFound(f"model '{name}' is not loaded; loaded models: {loaded}")
            self._models = {n: m for n, m in self._models.items() if n != name}
        self._loaded_by_call.discard(name)
        self._unloaded_by_call.add(name)
        log.info("model %s: unloaded %s by a call", name, _versions(gone))
        for model in gone.values():
            self._retire(model)
        return sorted(gone, reverse=True)

    def check_control(self, what: str) -> None:
        """FailedPrecondition unless model control (MODEL_CONTROL_MODE explicit or poll) is on; Unavailable
        while the start-up models load."""
        if self.control == "none":
            raise FailedPrecondition(
                f"model control is off (MODEL_CONTROL_MODE=none serves the models found at start): set "
                f"MODEL_CONTROL_MODE=explicit or poll to {what} models by API"
            )
        if not self.ready.is_set():
            raise Unavailable("models are still loading; try again when the server is ready")
        if self._stop.is_set():
            raise Unavailable("the server is shutting down")

    def _wanted(self, name: str, versions: list[int], take_labels: bool = False) -> list[int]:
        """The versions (newest first) the model's policy serves out of `versions`, from one read of its
        serving.json, which also gives its version labels (kept when `take_labels`); ValueError if either
        is invalid."""
        model_root = self.model_dir / name
        if name in self._overrides:  # set by a reload config, in place of serving.json's
            raw_policy, raw_labels = self._overrides[name]
            where = f"model '{name}'"
        else:
            config, where = serving_config(model_root), str(model_root / "serving.json")
            raw_policy, raw_labels = config.get("version_policy"), config.get("version_labels")
        policy, labels = version_policy(raw_policy, where), version_labels(raw_labels, where)
        if take_labels:
            self._labels = {**self._labels, name: labels}
            self._policies = {**self._policies, name: raw_policy}
        return policy(versions)

    def policy_of(self, name: str) -> object:
        """The version policy a served model follows, in serving.json's form (None: the default, the newest)."""
        return self._policies.get(name)

    def version_of_label(self, name: str, label: str) -> int:
        """The version a label names (serving.json "version_labels"); NotFound for an unknown label or a
        version that is not served."""
        self.get(name)  # NotFound (or Unavailable) for an unknown model
        labels = self._labels.get(name, {})
        version = labels.get(label)
        if version is None:
            known = ", ".join(f"'{k}'" for k in sorted(labels)) or "none (set version_labels in its serving.json)"
            raise NotFound(f"model '{name}' has no version label '{label}'; its labels: {known}")
        if version not in self._models.get(name, {}):
            served = ", ".join(str(v) for v in sorted(self._models.get(name, {}), reverse=True))
            raise NotFound(
                f"label '{label}' of model '{name}' names version {version}, which is not served; served: {served}"
            )
        return version

    def get(self, name: str, version: int = 0, label: str = "") -> LoadedModel:
        """The loaded model (by version, or by a version label); NotFound for unknown names, versions or
        labels, or versions not served."""
        if label:
            if version:
                raise InvalidArgument(f"give a version ({version}) or a version label ('{label}'), not both")
            version = self.version_of_label(name, label)
        served = self._models.get(name)
        if not served:
            if not self.ready.is_set():
                raise Unavailable(f"models are still loading; model '{name}' cannot be served yet")
            failed = [(v, f) for (n, v), f in list(self._failed.items()) if n == name and name in self.versions]
            if failed:
                raise Unavailable(f"model '{name}' failed to load: {max(failed)[1].reason}")
            if name in self.versions and self.control != "none":
                raise NotFound(
                    f"model '{name}' is not loaded (MODEL_CONTROL_MODE={self.control}): load it with LoadModel"
                )
            known = ", ".join(f"'{n}'" for n in self.versions) or "none"
            raise NotFound(f"model '{name}' not found; available models: {known}")
        if not version:
            return served[max(served)]
        model = served.get(version)
        if model is None and not self.ready.is_set():
            raise Unavailable(f"models are still loading; version {version} of model '{name}' cannot be served yet")
        if model is None:
            listed = ", ".join(str(v) for v in sorted(served, reverse=True))
            plural = "s" if len(served) > 1 else ""
            raise NotFound(f"version {version} of model '{name}' is not served; served version{plural}: {listed}")
        return model

    def served(self, name: str) -> list[LoadedModel]:
        """The served versions of a model, newest first; NotFound (or Unavailable) as `get`."""
        served = self._models.get(name)
        if not served:
            self.get(name)  # raises NotFound or Unavailable
            return []
        return [served[v] for v in sorted(served, reverse=True)]

    def models(self) -> list[LoadedModel]:
        """Every served version, by model name, newest version first."""
        with self._lock:
            return [served[v] for _, served in sorted(self._models.items()) for v in sorted(served, reverse=True)]

    def index(self) -> list[tuple[str, int, str, str]]:
        """(name, version, state, reason) of every version found under the directory now or served:
        READY when served, LOADING during start-up, else UNAVAILABLE with the reason."""
        found = find_versions(self.model_dir)
        served = self._models
        entries = []
        for name in sorted(set(found) | set(served)):
            versions = sorted(set(found.get(name, ())) | set(served.get(name, {})))
            unserved = [v for v in versions if v not in served.get(name, {})]
            # the model's serving.json is read once, and only when some version needs a reason
            wanted, problem = self._policy(name, found.get(name, [])) if unserved else ([], "")
            problem = self._policy_problems.get(name) or problem
            for version in versions:
                if version in unserved:
                    entries.append((name, version, *self._not_served(name, version, wanted, problem)))
                else:
                    entries.append((name, version, "READY", ""))
        return entries

    def _policy(self, name: str, versions: list[int], take_labels: bool = False) -> tuple[list[int], str]:
        """(the versions its policy wants, a problem): `_wanted`, with an invalid serving.json or a policy
        that wants none of `versions` as a problem ("" when there is none) instead of an error."""
        try:
            wanted = self._wanted(name, versions, take_labels)
        except (ValueError, OSError) as exc:
            return [], str(exc)
        return wanted, "" if wanted else f"its version_policy serves none of the versions found {versions}"

    def _not_served(self, name: str, version: int, wanted: list[int], problem: str) -> tuple[str, str]:
        """The state of a version found but not served, and why."""
        failure = self._failed.get((name, version))
        if failure is not None:
            return "UNAVAILABLE", f"failed to load: {failure.reason}"
        if name in self._unloaded_by_call:
            return "UNAVAILABLE", "unloaded by a call (UnloadModel)"
        if self.control == "explicit" and name not in self._models:
            return "UNAVAILABLE", "not loaded: MODEL_CONTROL_MODE=explicit loads a model when a call asks (LoadModel)"
        if problem:
            return "UNAVAILABLE", f"not served: {problem}"
        if version not in wanted:
            return "UNAVAILABLE", "not served: the model's version_policy does not ask for it"
        if not self.ready.is_set() or self.poll_seconds:
            return "LOADING", ""  # at start-up, or at the next poll
        return "UNAVAILABLE", "found after start-up; with MODEL_POLL_SECONDS=0 new versions are not loaded"

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
        with self._changing:
            self._poll()

    def _poll(self) -> None:
        everything = find_versions(self.model_dir)
        found = {n: v for n, v in everything.items() if n not in self._unloaded_by_call}
        if not found:  # an unmounted or half-replaced volume: keep serving what is loaded
            log.warning("no models in %s at this poll; keeping the loaded ones", self.model_dir)
            return
        for name, versions in found.items():
            if self._stop.is_set():
                return
            self._missing.pop(name, None)
            self._follow_policy(name, versions)
        for name in [n for n in self._models if n not in found and n not in self._loaded_by_call]:
            self._missing[name] = self._missing.get(name, 0) + 1
            if self._missing[name] < 2:  # absent twice in a row before it is unloaded
                continue
            with self._lock:
                gone = self._models[name]
                self._models = {n: m for n, m in self._models.items() if n != name}
                self.versions = {n: v for n, v in self.versions.items() if n != name}
            del self._missing[name]
            log.info("model %s: its directory is gone; unloading %s", name, _versions(gone))
            for model in gone.values():
                self._retire(model)
        with self._lock:  # replaced whole: `get` reads it without the lock
            self.versions = {  # what is found (loaded or not: NotFound and the index say why), and what serves
                **everything,
                **{
                    name: everything.get(name, self.versions.get(name, sorted(served, reverse=True)))
                    for name, served in self._models.items()
                },
            }

    def _follow_policy(self, name: str, versions: list[int]) -> None:
        """Load the versions the policy wants that are not served; then retire the ones it no longer wants."""
        wanted, problem = self._policy(name, versions, take_labels=True)
        if problem:
            if self._policy_problems.get(name) != problem:
                log.error("model %s: %s; the served versions stay", name, problem)
                self._policy_problems[name] = problem
            return
        self._policy_problems.pop(name, None)
        for version in wanted:
            if version not in self._models.get(name, {}):
                self._load_version(name, version)
        self._retire_unwanted(name, wanted)

    def _retire_unwanted(self, name: str, wanted: list[int]) -> None:
        """Stop serving the versions the policy no longer wants, once every wanted one serves."""
        served = self._models.get(name, {})
        unwanted = [v for v in served if v not in wanted]
        if not unwanted or not all(v in served for v in wanted):
            return  # nothing to retire, or a wanted version is not loaded (yet): keep serving what is there
        self._set_served(name, {v: m for v, m in served.items() if v in wanted})
        log.info("model %s: now serving %s; unloading %s", name, _versions(self._models[name]), _versions(unwanted))
        for version in unwanted:
            self._retire(served[version])

    def _load_version(self, name: str, version: int) -> None:
        path = self.model_dir / name / str(version)
        signature = files_signature(path)
        failed = self._failed.get((name, version))
        if failed is not None and failed.files == signature and time.monotonic() < failed.at + RETRY_FAILED_SECONDS:
            return  # failed before, and its files have not changed since
        served = self._models.get(name, {})
        try:
            model = load_model(name, version, path, self.device, self.batching)
        except Exception as exc:
            self._failed_to_load(name, version, signature, exc)
            serving = f"; still serving {_versions(served)}" if served else ""
            log.error("model %s: version %d failed to load (%s: %s)%s", name, version, type(exc).__name__, exc, serving)
            return
        self._failed.pop((name, version), None)
        if self._stop.is_set():  # shutting down while it loaded
            model.close(drain=False)
            return
        self._set_served(name, {**self._models.get(name, {}), version: model})
        log.info("model %s: version %d loaded and serving", name, version)

    def _failed_to_load(self, name: str, version: int, files: tuple[int, float] | None, exc: Exception) -> str:
        """Remember a version that failed to load (retried when its files change); the reason."""
        reason = _first_line(exc)
        self._failed[(name, version)] = LoadFailure(files, time.monotonic(), reason)
        return reason

    def _set_served(self, name: str, served: dict[int, LoadedModel]) -> None:
        with self._lock:
            self._models = {**self._models, name: served}

    def _retire(self, model: LoadedModel) -> None:
        """Unload a model no longer served, after calls that already hold it had time to finish."""
        key = id(model)

        def unload() -> None:
            with self._lock:
                entry = self._retiring.pop(key, None)
            if entry is None:  # closed by close() meanwhile
                return
            entry[1].close()
            del entry  # the timer keeps this function, not the model: its memory can go now
            # TensorFlow's functions and graphs hold reference cycles: collect them now, not at the
            # collector's next threshold, and hand the freed heap back (20 loads and unloads of a demo
            # model: 16 MiB of growth without this, 2.5-3.3 MiB with it).
            gc.collect()
            release_freed_memory()

        timer = threading.Timer(self.retire_seconds, unload)
        timer.daemon = True
        with self._lock:
            self._retiring[key] = (timer, model)
        timer.start()

    def close(self, drain: bool = True) -> None:
        """Stop polling and unload every model, including those being retired."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=60)  # a load in progress finishes first
        changing = self._changing.acquire(timeout=60)  # and so does a caller's load, unload or reload
        if changing:
            self._changing.release()
        with self._lock:
            retiring = list(self._retiring.values())
            self._retiring.clear()
        for timer, model in retiring:
            timer.cancel()
            model.close(drain=drain)
        for model in self.models():
            model.close(drain=drain)


def _folder_name(name: str) -> str:
    """A model name that names one folder of MODEL_DIR, or InvalidArgument."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InvalidArgument(f"model: {name!r} is not a model name (one folder name of MODEL_DIR)")
    return name


def _versions(versions: Iterable[int]) -> str:
    """ "version 1" or "versions 2, 1" for versions (or a dict keyed by them), newest first."""
    ordered = sorted(versions, reverse=True)
    return ("version " if len(ordered) == 1 else "versions ") + ", ".join(str(v) for v in ordered)
