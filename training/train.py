"""`python -m training.train`: train the TFT on history and write a new registry version.

History comes from a parquet file (the simulator's wide format or a long format) or from
Prometheus (`--prometheus.url` with `--start`/`--end`: one query_range per quantity through the
service's client, `forecaster.source`, split within its points and samples limits). Training is
seeded, time-boxed and writes no checkpoint (Lightning's .ckpt files are pickles); the result is
a version directory of safetensors + JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from pytorch_forecasting import TimeSeriesDataSet

from forecaster.config import PrometheusSettings
from forecaster.contract import load_contract
from forecaster.features import host_id, profile_of
from forecaster.grid import DAY_STEPS
from forecaster.history_files import read_history
from forecaster.model.config import TFTConfig
from forecaster.model.dataset import TIME, make_dataset, with_unknown_copies
from forecaster.model.tft import ModelBundle, build_model, loss_weights, save_bundle
from forecaster.registry import Registry, new_version, write_json_atomic
from forecaster.source import PrometheusSource
from training.dataset import WEIGHT, excursion_weights, segments, with_absent_copies

log = logging.getLogger("training.train")


@dataclass(frozen=True)
class TrainOptions:
    """How long and how to train (the model's shape is in TFTConfig)."""

    seed: int = 42
    batch_size: int = 64
    max_time_s: float = 18 * 60
    max_epochs: int = 100
    batches_per_epoch: int = 50
    validation_days: float = 1.0
    excursion_weight: float = 0.0  # extra loss weight on rows far from their recent normal
    absent_fraction: float = 0.0  # extra copies of this share of series with quantities absent
    device: str = "auto"
    threads: int | None = None
    devices: int = 1  # Lightning's devices, num_nodes and strategy (e.g. 2, 1, "ddp")
    num_nodes: int = 1
    strategy: str = "auto"


def accelerator(device: str) -> str:
    """Lightning accelerator for --device auto|cpu|cuda."""
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return "gpu" if device == "cuda" else "cpu"


def datasets(
    wide: pd.DataFrame, config: TFTConfig, options: TrainOptions
) -> tuple[TimeSeriesDataSet, TimeSeriesDataSet, list[float]]:
    """Training windows before the last `validation_days`, validation windows after it, and
    the per-target loss weights from the training rows."""
    frame = segments(wide, config)
    if frame.empty:
        raise ValueError("no series segment is long enough for one window (encoder + horizon)")
    frame[WEIGHT] = excursion_weights(frame, config, options.excursion_weight)
    cutoff = int(frame[TIME].max() - options.validation_days * DAY_STEPS)
    train_frame = with_absent_copies(
        frame[frame[TIME] <= cutoff], config, options.absent_fraction, options.seed
    )
    train_frame = with_unknown_copies(train_frame, config.mask_fraction, options.seed)
    training = make_dataset(train_frame, config, weight=WEIGHT)
    validation = TimeSeriesDataSet.from_dataset(
        training, frame, min_prediction_idx=cutoff + 1, stop_randomization=True
    )
    return training, validation, loss_weights(train_frame, config)


def train(
    wide: pd.DataFrame, config: TFTConfig, options: TrainOptions
) -> tuple[ModelBundle, dict[str, Any]]:
    """Fit a model; returns it with the training metrics."""
    pl.seed_everything(options.seed, workers=True, verbose=False)
    if options.threads:
        torch.set_num_threads(options.threads)
    training, validation, weights = datasets(wide, config, options)
    model = build_model(training, config, weights)
    trainer = pl.Trainer(
        accelerator=accelerator(options.device),
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        max_epochs=options.max_epochs,
        max_time={"seconds": int(options.max_time_s)},
        limit_train_batches=options.batches_per_epoch,
        limit_val_batches=20,
        num_sanity_val_steps=0,
        gradient_clip_val=0.1,
        enable_checkpointing=False,
        logger=False,
        enable_model_summary=False,
        deterministic=True,
    )
    started = time.monotonic()
    trainer.fit(
        model,
        train_dataloaders=training.to_dataloader(
            train=True, batch_size=options.batch_size, num_workers=0
        ),
        val_dataloaders=validation.to_dataloader(
            train=False, batch_size=options.batch_size * 2, num_workers=0
        ),
    )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    digest = weights_digest(model)
    metrics.update(
        seconds=round(time.monotonic() - started, 1),
        epochs=trainer.current_epoch,
        steps=trainer.global_step,
        training_windows=len(training),
        parameters=sum(p.numel() for p in model.parameters()),
        world_size=trainer.world_size,
        weights_sha256=digest,
    )
    log.info("rank %d of %d: weights sha256 %s", trainer.global_rank, trainer.world_size, digest)
    model.eval()
    return ModelBundle(config, model.cpu(), training.get_parameters()), metrics


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter, by name: equal across the ranks of a distributed run once
    their gradients have been all-reduced."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_version(
    registry: Registry, bundle: ModelBundle, wide: pd.DataFrame, info: dict[str, Any]
) -> str:
    """Store a trained bundle as a new version (atomic rename); returns the version name."""
    version = info.get("version") or new_version()
    registry.remove_stale_tmp()
    with registry.staging(version) as staged:
        save_bundle(bundle, staged)
        instances = sorted(wide["instance"].astype(str).unique())
        labels = wide.groupby("instance")["profile"].first() if "profile" in wide else {}
        mapping = {
            "version": "1",
            "encoding": "sha256 of the instance name, first 16 hex digits",
            "servers": {
                i: {"id": host_id(i), "profile": profile_of(i, labels.get(i))} for i in instances
            },
        }
        write_json_atomic(staged / "server_mapping.json", mapping)
        registry.commit(staged, version, {k: v for k, v in info.items() if k != "version"})
    return version


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="parquet history (file or directory)")
    source.add_argument("--prometheus.url", dest="prometheus_url", help="Prometheus base URL")
    parser.add_argument("--start", type=pd.Timestamp, help="with --prometheus.url: range start")
    parser.add_argument("--end", type=pd.Timestamp, help="with --prometheus.url: range end")
    parser.add_argument("--models.dir", dest="models_dir", type=Path, default=Path("models"))
    parser.add_argument("--version", help="version name (default: vYYYYMMDD-HHMMSS)")
    parser.add_argument("--promote", action="store_true", help="make it the current version")
    parser.add_argument("--targets", help="comma-separated target quantities")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-minutes", type=float, default=18.0)
    parser.add_argument("--batches-per-epoch", type=int, default=50)
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--hidden-size", type=int, default=16)
    parser.add_argument(
        "--normalisation",
        choices=("mean", "last"),
        default="mean",
        help="centre each window on its mean (library default) or on its last value",
    )
    parser.add_argument(
        "--excursion-weight",
        type=float,
        default=0.0,
        help="extra loss weight (0 = none) on steps far from their recent normal, e.g. 4",
    )
    parser.add_argument(
        "--absent-fraction",
        type=float,
        default=0.0,
        help="add copies of this share of series with some quantities absent, as real hosts "
        "export only some (0 = none), e.g. 0.5",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--devices", type=int, default=1, help="devices per node (Lightning's `devices`)"
    )
    parser.add_argument(
        "--num-nodes", type=int, default=1, help="machines (Lightning's `num_nodes`)"
    )
    parser.add_argument(
        "--strategy",
        choices=("auto", "ddp", "ddp_spawn"),
        default="auto",
        help="Lightning's strategy; ddp: one process per device, gloo on the CPU, NCCL on GPUs",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--log.level", dest="log_level", default="info")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    # sklearn warns once per sample that pytorch-forecasting scales arrays without names.
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    contract = load_contract()
    targets = tuple(args.targets.split(",")) if args.targets else TFTConfig().targets
    unknown = [t for t in targets if t not in {q.name for q in contract.quantities}]
    if unknown:
        parser.error(f"--targets: not in the data contract: {unknown}")
    config = TFTConfig(
        targets=targets,
        encoder_length=contract.grid.context_steps,
        horizon=contract.grid.horizon_steps,
        hidden_size=args.hidden_size,
        normalisation=args.normalisation,
        transformations={k: v for k, v in TFTConfig().transformations.items() if k in targets},
    )
    quantities = [*config.targets, *config.covariates]
    if args.data is not None:
        wide = read_history(args.data, quantities)
    else:
        if args.start is None or args.end is None:
            parser.error("--prometheus.url needs --start and --end")
        expressions = {q: contract[q].expr for q in quantities}
        try:
            settings = PrometheusSettings(url=args.prometheus_url)
        except ValueError as error:  # pydantic's ValidationError
            parser.error(f"--prometheus.url: {error}")
        with PrometheusSource(settings) as source:
            wide = source.fetch_history(expressions, args.start.timestamp(), args.end.timestamp())
    if args.devices < 1 or args.num_nodes < 1:
        parser.error("--devices and --num-nodes: at least 1")
    if not 0.0 <= args.absent_fraction <= 1.0:
        parser.error("--absent-fraction: a share of the series, from 0 to 1")
    options = TrainOptions(
        seed=args.seed,
        batch_size=args.batch_size,
        max_time_s=args.max_minutes * 60,
        batches_per_epoch=args.batches_per_epoch,
        max_epochs=args.max_epochs,
        excursion_weight=args.excursion_weight,
        absent_fraction=args.absent_fraction,
        device=args.device,
        threads=args.threads,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
    )
    bundle, metrics = train(wide, config, options)
    if rank_zero_only.rank != 0:  # a distributed run: only the global rank 0 writes the version
        return 0
    info = {
        "version": args.version,
        "contract_version": contract.version,
        "command": shlex.join(["python", "-m", "training.train", *(argv or sys.argv[1:])]),
        "data": {
            "source": str(args.data or args.prometheus_url),
            "start": str(wide["timestamp"].min()),
            "end": str(wide["timestamp"].max()),
            "instances": int(wide["instance"].nunique()),
        },
        "seed": options.seed,
        "metrics": metrics,
        "host": {"cpus": os.cpu_count(), "device": accelerator(options.device)},
        "distributed": {
            "world_size": metrics["world_size"],
            "devices": options.devices,
            "num_nodes": options.num_nodes,
            "strategy": options.strategy,
        },
    }
    registry = Registry(args.models_dir)
    version = write_version(registry, bundle, wide, info)
    if args.promote:
        registry.promote(version, contract.version)
    log.info("wrote version %s in %s (%s)", version, args.models_dir, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
