"""The serving model: loaded off the request path, watched, hot-reloaded when promoted.

`ModelHolder` loads the registry's current version in a background thread (so the service
serves heuristic forecasts, or its persisted snapshot, before torch is even imported), then
polls the registry pointer every `reload_interval` and swaps in a newly promoted version. A
version that fails verification, its artefacts' schemas (`forecaster.model.schema`, checked
before torch is imported) or loading is refused with a bounded reason and one log line, and
the model already serving keeps serving; with none serving yet (a start), the pointer's
previous version is tried before the heuristic takes over. torch is imported only inside the
loading thread.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forecaster.config import ModelSettings
from forecaster.registry import Registry, RegistryError

log = logging.getLogger(__name__)
LOAD_REASONS = (*RegistryError.REASONS, "no_model", "load_error")


@dataclass(frozen=True)
class LoadedModel:
    """A verified version and its fast predictor."""

    version: str
    predictor: Any  # forecaster.model.fast.FastPredictor
    device: str


def load_version(
    registry: Registry, version: str, contract_version: str, settings: ModelSettings
) -> LoadedModel:
    """Verify `version` (hashes, contract, artefact schemas) and build its predictor;
    RegistryError if refused."""
    registry.checked(version, contract_version)
    from forecaster.model.fast import FastPredictor
    from forecaster.model.runtime import resolve_device, set_threads
    from forecaster.model.tft import load_bundle

    set_threads(settings.threads)
    device = resolve_device(settings.device)
    try:
        bundle = load_bundle(registry.path(version), device=device)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RegistryError("corrupt", f"{version}: cannot load: {exc}") from None
    predictor = FastPredictor(bundle, device=device, batch_size=settings.batch_size)
    return LoadedModel(version, predictor, device)


class ModelHolder:
    """Holds the current model; `current` is safe to read from any thread."""

    def __init__(
        self,
        settings: ModelSettings,
        contract_version: str,
        *,
        loader: Callable[[Registry, str, str, ModelSettings], LoadedModel] = load_version,
        on_change: Callable[[LoadedModel | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.contract_version = contract_version
        self.registry = Registry(settings.dir)
        self.failures: Counter[str] = Counter()
        self._loader = loader
        self.on_change = on_change
        self._current: LoadedModel | None = None
        self._refused: str | None = None  # the version that failed last, not retried
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        """The model serving now (None until one has loaded)."""
        return self._current

    def check(self) -> LoadedModel | None:
        """Load the registry's current version if it is new; returns the serving model.

        When it is refused and no model serves yet, the pointer's previous version is tried.
        """
        with self._lock:
            try:
                pointer = self.registry.pointer()
            except (OSError, ValueError, AttributeError) as exc:
                return self._refuse("corrupt", f"unreadable registry pointer: {exc}", None)
            wanted, previous = pointer["version"], pointer["previous"]
            if wanted is None:
                if self._refused != "":
                    log.warning("no model in %s: serving heuristic forecasts", self.registry.root)
                    self.failures["no_model"] += 1
                    self._refused = ""
                return self._current
            if self._current is not None and self._current.version == wanted:
                return self._current
            if wanted == self._refused:
                return self._current
            fallback = previous if self._current is None and previous != wanted else None
            loaded = self._load(wanted, fallback)
            if loaded is None and fallback is not None:
                loaded = self._load(fallback, None, instead_of=wanted)
            if loaded is None:
                return self._current
        if self.on_change is not None:
            self.on_change(loaded)
        return loaded

    def _load(
        self, version: str, fallback: str | None, instead_of: str | None = None
    ) -> LoadedModel | None:
        """Load `version` and make it current; None (and the old model stays) if refused.

        `fallback` names the version tried next if this one is refused (for the log line);
        `instead_of` the refused version this one stands in for, which stays refused (so it
        is not retried at every poll, only when promoted anew or on `reload_now`).
        """
        try:
            loaded = self._loader(self.registry, version, self.contract_version, self.settings)
        except RegistryError as exc:
            self._refuse(exc.reason, str(exc), instead_of or version, fallback)
            return None
        except Exception as exc:  # a broken artefact must never stop the service
            message = f"{version}: {type(exc).__name__}: {exc}"
            self._refuse("load_error", message, instead_of or version, fallback)
            return None
        was = self._current.version if self._current else None
        self._current = loaded
        self._refused = instead_of
        if instead_of is None:
            log.info("model %s loaded on %s (was %s)", loaded.version, loaded.device, was)
        else:
            log.warning(
                "previous model %s loaded on %s in place of the refused %s",
                loaded.version,
                loaded.device,
                instead_of,
            )
        return loaded

    def _refuse(
        self, reason: str, message: str, version: str | None, fallback: str | None = None
    ) -> LoadedModel | None:
        self.failures[reason] += 1
        self._refused = version
        if fallback is not None:
            then = f"trying the previous version {fallback}"
        else:
            then = f"{self._current.version if self._current else 'the heuristic'} keeps serving"
        log.error("model refused (%s): %s; %s", reason, message, then)
        return self._current

    def reload_now(self) -> None:
        """Ask the watcher to look at the registry at once (also retries a refused version)."""
        self._refused = None
        self._wake.set()

    def start(self) -> None:
        """Load in the background, then watch the pointer every `reload_interval`."""
        if not self.settings.enabled:
            log.info("model disabled by configuration: heuristic forecasts only")
            return
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop watching (a load in progress finishes in its daemon thread)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._wake.wait(self.settings.reload_interval)
            self._wake.clear()
