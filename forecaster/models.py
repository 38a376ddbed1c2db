"""The serving model: loaded off the request path, watched, hot-reloaded when promoted.

`ModelHolder` loads the registry's current version in a background thread (so the service
serves heuristic forecasts, or its persisted snapshot, before torch is even imported), then
polls the registry pointer every `reload_interval` and swaps in a newly promoted version. A
version that fails verification or loading is refused with a bounded reason and the model
already serving keeps serving. torch is imported only inside the loading thread.
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


def resolve_device(requested: str) -> str:
    """`auto` -> cuda when torch sees a GPU, else cpu."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_version(
    registry: Registry, version: str, contract_version: str, settings: ModelSettings
) -> LoadedModel:
    """Verify `version` (hashes, contract) and build its predictor; RegistryError if refused."""
    registry.verify(version, contract_version)
    import torch

    from forecaster.model.fast import FastPredictor
    from forecaster.model.tft import load_bundle

    if settings.threads:
        torch.set_num_threads(settings.threads)
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
        """Load the registry's current version if it is new; returns the serving model."""
        with self._lock:
            try:
                wanted = self.registry.current()
            except (OSError, ValueError) as exc:
                return self._refuse("corrupt", f"unreadable registry pointer: {exc}", None)
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
            loaded = self._load(wanted)
            if loaded is None:
                return self._current
        if self.on_change is not None:
            self.on_change(loaded)
        return loaded

    def _load(self, wanted: str) -> LoadedModel | None:
        """Load `wanted` and make it current; None (and the old model stays) if refused."""
        try:
            loaded = self._loader(self.registry, wanted, self.contract_version, self.settings)
        except RegistryError as exc:
            self._refuse(exc.reason, str(exc), wanted)
            return None
        except Exception as exc:  # a broken artefact must never stop the service
            self._refuse("load_error", f"{wanted}: {type(exc).__name__}: {exc}", wanted)
            return None
        previous = self._current.version if self._current else None
        self._current = loaded
        self._refused = None
        log.info("model %s loaded on %s (was %s)", loaded.version, loaded.device, previous)
        return loaded

    def _refuse(self, reason: str, message: str, version: str | None) -> LoadedModel | None:
        self.failures[reason] += 1
        self._refused = version
        serving = self._current.version if self._current else "the heuristic"
        log.error("model refused (%s): %s; %s keeps serving", reason, message, serving)
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
