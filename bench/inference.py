"""Inference: the fast path against pytorch-forecasting's `TimeSeriesDataSet` + `predict()`.

Both paths forecast the same series with the same model, starting from the same dense arrays
(the cleaner's output): the fast path builds the network's inputs with array operations
(`forecaster.model.fast`), the library path turns the arrays into a DataFrame, builds a
`TimeSeriesDataSet` from the model's dataset parameters and calls `predict(mode="quantiles")`.
They run one after the other in this process, so the ratio is measured under the same load;
the numbers must agree (sorted quantiles, relative difference). Band calibration, applied
after the network, is switched off so that the raw network outputs are compared.

The model is the registry's shipped default (`models/<current>`); history comes from the
simulator (seed 42), two days per server, the grid's context (a day) as context.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import Context, figure, load
from forecaster.grid import CONTEXT_STEPS, DAY_STEPS, STEP_SECONDS

NAME = "inference"
TITLE = "Inference: fast path vs the library's `TimeSeriesDataSet` + `predict()`"
SIZES = (20, 1_000)
QUICK_SIZES = (5,)
CONTEXT = CONTEXT_STEPS


def load_model(models_dir: Path) -> Any:
    """The registry's current version as a bundle, without band calibration."""
    from forecaster.model.tft import load_bundle
    from forecaster.registry import Registry

    registry = Registry(models_dir)
    version = registry.current()
    if version is None:
        raise RuntimeError(f"no current model in {models_dir}")
    bundle = load_bundle(registry.path(version))
    if getattr(bundle, "calibration", None) is not None:
        bundle = dataclasses.replace(bundle, calibration=None)
    return version, bundle


def history_arrays(servers: int, config: Any, *, seed: int = 42, days: float = 2.0) -> dict:
    """Simulated history of `servers` hosts as right-aligned (N, CONTEXT, .) arrays."""
    from forecaster.history_files import read_history
    from simulator.fleet import build_fleet
    from simulator.history import HistorySpec, write_history

    last = int(time.time()) // STEP_SECONDS - 12
    first = last - int(days * DAY_STEPS)
    with tempfile.TemporaryDirectory(prefix="bench-history-") as out:
        write_history(
            build_fleet(servers, seed=seed),
            HistorySpec(first, last, first * float(STEP_SECONDS)),
            Path(out),
        )
        wide = read_history(Path(out), [*config.targets, *config.covariates])
    wide = wide.sort_values(["instance", "timestamp"], kind="stable")
    instances = sorted(wide["instance"].astype(str).unique())
    tail = wide.groupby("instance", sort=True).tail(CONTEXT)
    n = len(instances)
    targets = tail[list(config.targets)].to_numpy(np.float64).reshape(n, CONTEXT, -1)
    covariates = tail[list(config.covariates)].to_numpy(np.float64).reshape(n, CONTEXT, -1)
    profiles = tail.groupby("instance", sort=True)["profile"].first().astype(str).tolist()
    end = int(tail["timestamp"].max().timestamp())
    return {
        "instances": instances,
        "profiles": profiles,
        "end": end,
        "targets": targets,
        "covariates": covariates,
    }


def make_batch(data: dict) -> Any:
    """The fast path's `Batch` of the arrays (full CONTEXT-step histories)."""
    from forecaster.features import host_id, profile_of
    from forecaster.model.fast import Batch

    names = data["instances"]
    return Batch(
        end=data["end"],
        targets=data["targets"],
        covariates=data["covariates"],
        lengths=np.full(len(names), CONTEXT, dtype=np.int64),
        profiles=tuple(profile_of(n, p) for n, p in zip(names, data["profiles"], strict=True)),
        hosts=tuple(host_id(n) for n in names),
    )


def fast_forecast(predictor: Any, data: dict) -> np.ndarray:
    """The fast path: a `Batch` from the arrays, one network call per batch."""
    return np.asarray(predictor.predict(make_batch(data)))


def forward_only(predictor: Any, data: dict) -> float:
    """Seconds the network's forward pass alone takes on the fast path's inputs."""
    import torch

    batch = make_batch(data)
    size, n = predictor.batch_size, len(data["instances"])
    inputs = [predictor.inputs(batch, slice(lo, lo + size)) for lo in range(0, n, size)]
    started = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            predictor.model(x)
    return time.perf_counter() - started


def _library_frame(config: Any, data: dict) -> pd.DataFrame:
    """The arrays as the long DataFrame the library reads: history plus horizon rows."""
    n, horizon = len(data["instances"]), config.horizon
    steps = CONTEXT + horizon
    offsets = np.arange(-CONTEXT + 1, horizon + 1)
    seconds = data["end"] + STEP_SECONDS * offsets
    frame: dict[str, Any] = {
        "instance": np.repeat(np.asarray(data["instances"], dtype=object), steps),
        "timestamp": pd.to_datetime(np.tile(seconds, n), unit="s", utc=True),
        "profile": np.repeat(np.asarray(data["profiles"], dtype=object), steps),
    }
    for key, names in (("targets", config.targets), ("covariates", config.covariates)):
        values = data[key]
        future = np.repeat(values[:, -1:, :], horizon, axis=1)  # unknown later: last value
        full = np.concatenate([values, future], axis=1).reshape(n * steps, -1)
        for i, name in enumerate(names):
            frame[name] = full[:, i]
    return pd.DataFrame(frame)


def library_forecast(bundle: Any, data: dict, batch_size: int = 64) -> np.ndarray:
    """The library path: DataFrame -> `TimeSeriesDataSet.from_parameters` -> `predict()`."""
    from pytorch_forecasting import TimeSeriesDataSet

    from forecaster.model.dataset import known_categories, model_frame

    frame = known_categories(
        bundle.parameters, model_frame(_library_frame(bundle.config, data), bundle.config)
    )
    weight = bundle.parameters.get("weight")
    if weight:  # trained with per-row loss weights: prediction ignores them, but reads the column
        frame[weight] = 1.0
    dataset = TimeSeriesDataSet.from_parameters(bundle.parameters, frame, predict=True)
    result = bundle.model.predict(
        dataset,
        mode="quantiles",
        batch_size=batch_size,
        return_index=True,
        trainer_kwargs={
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
    )
    output = np.stack([o.numpy() for o in result.output], axis=2)  # (n, horizon, targets, q)
    order = list(result.index["series"])
    rows = [order.index(name) for name in data["instances"]]
    return np.sort(output[rows], axis=-1)


def compare(fast: np.ndarray, library: np.ndarray) -> dict[str, float]:
    """How far apart the two paths are: the largest absolute difference, and the largest
    difference relative to each target's scale (its largest |value|), so that float32
    rounding near zero does not read as a large relative error."""
    diff = np.abs(fast - library)
    scale = np.abs(library).max(axis=(0, 1, 3), keepdims=True)
    return {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / np.maximum(scale, 1e-12)).max()),
    }


def measure(bundle: Any, servers: int, *, fast_runs: int = 3) -> dict[str, Any]:
    """Both paths on `servers` series (fast path best of `fast_runs`, library path once)."""
    from forecaster.model.fast import FastPredictor

    data = history_arrays(servers, bundle.config)
    predictor = FastPredictor(bundle)
    fast_forecast(predictor, {**data, **_first(data, 2)})  # warm-up: first-call overheads
    fast_times = []
    for _ in range(fast_runs):
        started = time.perf_counter()
        fast = fast_forecast(predictor, data)
        fast_times.append(time.perf_counter() - started)
    forward_s = min(forward_only(predictor, data) for _ in range(2))
    started = time.perf_counter()
    library = library_forecast(bundle, data)
    library_s = time.perf_counter() - started
    return {
        "servers": servers,
        "forward_s": forward_s,
        "fast_s": min(fast_times),
        "library_s": library_s,
        "ratio": library_s / min(fast_times),
        **compare(fast, library),
        "load": load(),
    }


def _first(data: dict, n: int) -> dict:
    return {
        "instances": data["instances"][:n],
        "profiles": data["profiles"][:n],
        "targets": data["targets"][:n],
        "covariates": data["covariates"][:n],
    }


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric",
        "pytorch_lightning",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(ctx: Context) -> dict[str, Any]:
    """Both paths at each size; a ratio and a numerical-agreement figure per size."""
    _quiet()
    import torch

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    version, bundle = load_model(ctx.repo / "models")
    rows = [measure(bundle, n) for n in (QUICK_SIZES if ctx.quick else SIZES)]
    threads = threads_effect(bundle, rows[0]["servers"], ctx.threads or torch.get_num_threads())
    figures = []
    for row in rows:
        figures.append(
            figure(
                f"{row['servers']:,} servers: library {row['library_s']:.2f} s / fast "
                f"{row['fast_s']:.3f} s",
                row["ratio"],
                "x",
                goal_op=">=",
                goal_value=5.0,
                digits=1,
                at_load=row["load"],
            )
        )
        figures.append(
            figure(
                f"{row['servers']:,} servers: the network's forward pass alone (part of both)",
                row["forward_s"],
                "s",
                at_load=row["load"],
            )
        )
        figures.append(
            figure(
                f"{row['servers']:,} servers: largest difference fast vs library "
                "(relative to the target's scale)",
                row["max_rel_diff"],
                "",
                goal_op="<=",
                goal_value=1e-4,
                digits=9,
                at_load=row["load"],
            )
        )
    figures.append(
        figure(
            f"{threads['servers']} servers, fast path: torch's default {threads['default']} "
            f"threads {threads['default_s']:.3f} s / {threads['ours']} thread(s) "
            f"{threads['ours_s']:.3f} s",
            threads["default_s"] / threads["ours_s"],
            "x",
            digits=1,
        )
    )
    return {
        "figures": figures,
        "rows": rows,
        "threads_effect": threads,
        "model": version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "notes": [
            *(
                f"{r['servers']:,} servers: the network's forward pass alone took "
                f"{r['forward_s']:.2f} s of the fast path's {r['fast_s']:.2f} s and of the "
                f"library's {r['library_s']:.2f} s, so the ratio is bounded by "
                f"{r['library_s'] / r['forward_s']:.1f}x unless the forward pass itself gets "
                "faster."
                for r in rows[-1:]
            ),
            f"torch threads: {torch.get_num_threads()} for both paths (`python -m bench "
            "--threads N`; 0 = torch's default). The last row compares the fast path with "
            "torch's default thread count: on a 2-core machine that other work keeps busy, "
            "OpenMP threads spin on oversubscribed cores, so one thread can be much faster.",
        ],
    }


def threads_effect(bundle: Any, servers: int, ours: int) -> dict[str, Any]:
    """The fast path with torch's default thread count against `ours`, best of three each."""
    import torch

    from forecaster.model.fast import FastPredictor

    data = history_arrays(servers, bundle.config)
    predictor = FastPredictor(bundle)
    default = os.cpu_count() or 1  # torch's default: one intra-op thread per core
    timings = {}
    for label, count in (("default", default), ("ours", ours)):
        torch.set_num_threads(count)
        fast_forecast(predictor, data)
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fast_forecast(predictor, data)
            times.append(time.perf_counter() - started)
        timings[label] = min(times)
    torch.set_num_threads(ours)
    return {
        "servers": servers,
        "default": default,
        "ours": ours,
        "default_s": timings["default"],
        "ours_s": timings["ours"],
        "load": load(),
    }
