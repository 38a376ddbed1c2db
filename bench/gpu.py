"""`python -m bench.gpu`: inference + risk + render from in-memory arrays, on a GPU or the CPU.

Stand-alone on purpose: a machine with a GPU may have another Python and torch and no
Prometheus, so this needs only numpy, torch, pytorch-forecasting and this repository (the
shipped model under `models/`). Per fleet size it builds the cleaner's dense arrays directly
(a diurnal signal with noise per host and quantity, a day of steps), then times the service's own
stages: `forecaster.engine.forecast` (the TFT through the fast path, all hosts batched),
`Service._build` (risk, breach outlook, snapshot) and `exporter.render.render_text` (+ gzip).
Prints one JSON line. Goal (issue "Performance benchmarks"): 100,000 servers in at most 10 s.

    python -m bench.gpu --device cuda --servers 10000,100000
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

QUANTITY_LEVELS = {
    "cpu_utilisation": (0.45, 0.1),
    "memory_utilisation": (0.6, 0.05),
    "filesystem_utilisation": (0.5, 0.01),
    "disk_io": (3.0e7, 8.0e6),
    "request_latency_p95": (0.08, 0.02),
    "network_receive": (2.0e6, 5.0e5),
    "network_transmit": (1.0e6, 3.0e5),
    "http_error_ratio": (0.01, 0.005),
    "gc_pause": (0.02, 0.005),
    "load1": (2.0, 0.5),
}
PREFIXES = ("ppml", "ppdb", "ppweb", "ppcon", "ppetl", "pprisk", "ppgen")
NAME = "gpu"
TITLE = "GPU: inference + risk + render from in-memory arrays"
NOT_RUN = "not run (no GPU machine available to this task)"


def cleaned_arrays(
    servers: int, quantities: tuple[str, ...], end: int, grid: Any, seed: int = 0
) -> Any:
    """A `forecaster.clean.Cleaned` of `servers` hosts with the grid's context of observed
    steps each (a `forecaster.contract.Grid`)."""
    import pandas as pd

    from forecaster.clean import Cleaned

    rng = np.random.default_rng(seed)
    steps = grid.context_steps
    seconds = end - grid.step_seconds * np.arange(steps - 1, -1, -1)
    day = np.sin(2 * np.pi * seconds / 86400.0)
    values = np.empty((servers, steps, len(quantities)))
    for i, name in enumerate(quantities):
        level, spread = QUANTITY_LEVELS.get(name, (1.0, 0.1))
        base = level * (1.0 + 0.2 * rng.standard_normal(servers))
        noise = spread * 0.2 * rng.standard_normal((servers, steps))
        values[:, :, i] = np.clip(base[:, None] + spread * day[None, :] + noise, 0.0, None)
        if name.endswith("utilisation") or name == "http_error_ratio":
            values[:, :, i] = np.minimum(values[:, :, i], 1.0)
    names = tuple(f"{PREFIXES[k % len(PREFIXES)]}{k:06d}" for k in range(servers))
    return Cleaned(
        instances=names,
        quantities=quantities,
        end=pd.Timestamp(end, unit="s", tz="UTC"),
        values=values,
        observed=np.ones(values.shape, dtype=bool),
        lengths=np.full(servers, steps, dtype=np.int64),
        skipped={},
        counts=Counter(),
    )


def _service(models: Path, device: str, batch_size: int, threads: int):
    from forecaster.config import Config
    from forecaster.service import Service
    from forecaster.serving import ModelHolder

    config = Config.model_validate(
        {
            "state": {"dir": None},
            "model": {
                "dir": str(models),
                "device": device,
                "batch_size": batch_size,
                "threads": threads,
            },
            "cycle": {"max_series": 1_000_000},
        }
    )
    holder = ModelHolder(config.model, config.contract().version)
    model = holder.check()
    if model is None:
        raise SystemExit(f"no loadable model in {models}: {dict(holder.failures)}")
    return Service(config, None, holder, lambda *_: None), model


def measure(service: Any, model: Any, servers: int) -> dict[str, Any]:
    """One fleet size: arrays -> forecast -> risk + snapshot -> render."""
    from exporter.render import render_text
    from exporter.snapshot import ServiceState
    from forecaster.engine import forecast
    from forecaster.features import profile_of

    grid = service.contract.grid
    end = int(time.time()) // grid.step_seconds * grid.step_seconds
    cleaned = cleaned_arrays(servers, tuple(q.name for q in service.quantities), end, grid)
    profiles = {name: profile_of(name) for name in cleaned.instances}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    result = forecast(
        cleaned,
        service.targets,
        profiles,
        model.predictor,
        min_steps=36,
        horizon=grid.horizon_steps,
        step=grid.step_seconds,
        season=grid.season_steps,
    )
    _synchronise(model.device)
    timings["forecast_s"] = time.perf_counter() - started
    started = time.perf_counter()
    last_seen = dict.fromkeys(cleaned.instances, float(end))
    snapshot = service._build(result, last_seen, model.version)
    timings["risk_snapshot_s"] = time.perf_counter() - started
    state = ServiceState(source_up=True, model_loaded=True, model_version=model.version)
    started = time.perf_counter()
    body = render_text(snapshot, state, now=time.time(), stale_after=1800.0)
    timings["render_s"] = time.perf_counter() - started
    started = time.perf_counter()
    gzip.compress(body, compresslevel=6, mtime=0)
    timings["gzip_s"] = time.perf_counter() - started
    tft = sum(1 for i in snapshot.instances.values() if i.method == "tft")
    return {
        "servers": servers,
        **timings,
        "total_s": sum(timings.values()),
        "tft": tft,
        "body_bytes": len(body),
    }


def _synchronise(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    """Measure each size and print one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda, cpu or auto")
    parser.add_argument("--servers", default="10000,100000", help="comma-separated sizes")
    parser.add_argument(
        "--models", type=Path, default=Path(__file__).resolve().parent.parent / "models"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="0: 4096 on cuda, the service's default on cpu"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    import platform

    import torch

    from forecaster.model.config import FORWARD_BATCH_SIZE

    batch = args.batch_size or (4096 if args.device != "cpu" else FORWARD_BATCH_SIZE)
    service, model = _service(args.models, args.device, batch, args.threads)
    sizes = [int(s) for s in args.servers.split(",") if s.strip()]
    measure(service, model, min(sizes[0], 64))  # warm-up: CUDA context, kernels, allocator
    rows = [measure(service, model, n) for n in sizes]
    device_name = torch.cuda.get_device_name(0) if model.device.startswith("cuda") else "cpu"
    payload = {
        "benchmark": "gpu",
        "device": model.device,
        "device_name": device_name,
        "batch_size": batch,
        "model": model.version,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "-m", "bench.gpu", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    sys.stdout.write(json.dumps(payload) + "\n")
    return 0


def run(ctx: Any) -> dict[str, Any]:
    """Under `python -m bench`: run on CUDA when this machine has it, else say it was not run."""
    import subprocess

    from bench.common import figure, run_json

    probe = subprocess.run(  # noqa: S603 - our interpreter, fixed arguments
        [ctx.python, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if probe.stdout.strip() != "True":
        return {
            "figures": [
                figure(f"{n:,} servers: inference + risk + render", None, "s", note=NOT_RUN)
                for n in (10_000, 100_000)
            ],
            "not_run": NOT_RUN,
            "rows": [],
        }
    result = run_json(
        [ctx.python, "-m", "bench.gpu", "--device", "cuda", "--servers", "10000,100000"],
        timeout=3600,
    )
    figures = [
        figure(
            f"{row['servers']:,} servers: inference + risk + render ({result['device_name']})",
            row["total_s"],
            "s",
            goal_op="<=" if row["servers"] >= 100_000 else None,
            goal_value=10.0 if row["servers"] >= 100_000 else None,
        )
        for row in result["rows"]
    ]
    return {"figures": figures, **result}


if __name__ == "__main__":
    sys.exit(main())
