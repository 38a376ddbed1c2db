"""Convert public real-server datasets into the history layout the training CLIs read.

`python -m training.real_data datacenter-traces --source DIR --out data/real-datacenter`
reads a copy of the public repository `alejandrofdez-us/DataCenter-Traces-Datasets` (licence
CC BY 4.0, as its `metadata.jsonld` states; the data themselves are derived from the Alibaba
2018 cluster trace, the Google 2019 cluster trace and the Azure public dataset V2) and writes
`DIR/server_metrics.parquet` in the simulator's WIDE layout (`instance`, `timestamp`, one
column per contract quantity, base units). Nothing of the data is kept in this repository.

Each file is one real fleet's 5-minute utilisation averaged over the whole data centre, so it
is one "instance" per file part:

- `alibaba2018`: days 1-8 (`cpu_util_percent`, `mem_util_percent`, `disk_io_percent`,
  `net_in`, `net_out`): CPU and memory as ratios (/100), disk I/O and network as the
  dataset's normalised 0-100 figures in the `disk_io` and `network_*` columns;
- `google2019-w1` ... `-w4`: the month cut in weeks (`avg_cpu`, `avg_mem`, ratios already);
- `azure2019-p1` ... `-p3`: the month cut in 10-day parts (`cpu_usage` in cores and
  `assigned_mem`), each divided by 1.25 times its month's maximum, as a utilisation of a
  capacity the dataset does not state.

Timestamps are not in most of these files; every part starts at `--start` (a Monday, UTC).
These series are used only to evaluate (`training.evaluation.guard`), never to train or tune.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

STEP = 300  # the files' own sample interval (`..._grouped_300_seconds`), seconds
DAY_STEPS = 86_400 // STEP
FILES = {
    "alibaba": "alibaba2018/machine_usage_days_1_to_8_grouped_300_seconds.csv",
    "google": "google2019/instance_usage_grouped_300_seconds_month.csv",
    "azure": "azure_v2/vm_cpu_readings_month_aggregated_cpu_mem.csv",
}


def _part(name: str, columns: dict[str, np.ndarray], start: pd.Timestamp) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    stamps = start + pd.to_timedelta(np.arange(n) * STEP, unit="s")
    return pd.DataFrame({"instance": name, "timestamp": stamps, **columns})


def datacenter_traces(source: Path, start: pd.Timestamp) -> pd.DataFrame:
    """The WIDE frame of every part described in the module docstring."""
    parts = []
    alibaba = pd.read_csv(source / FILES["alibaba"])
    parts.append(
        _part(
            "alibaba2018",
            {
                "cpu_utilisation": alibaba["cpu_util_percent"].to_numpy() / 100.0,
                "memory_utilisation": alibaba["mem_util_percent"].to_numpy() / 100.0,
                "disk_io": alibaba["disk_io_percent"].clip(lower=0).to_numpy(),
                "network_receive": alibaba["net_in"].to_numpy(),
                "network_transmit": alibaba["net_out"].to_numpy(),
            },
            start,
        )
    )
    google = pd.read_csv(source / FILES["google"])
    week = 7 * DAY_STEPS
    for k in range(len(google) // week):
        chunk = google.iloc[k * week : (k + 1) * week]
        parts.append(
            _part(
                f"google2019-w{k + 1}",
                {
                    "cpu_utilisation": chunk["avg_cpu"].to_numpy(),
                    "memory_utilisation": chunk["avg_mem"].to_numpy(),
                },
                start,
            )
        )
    azure = pd.read_csv(source / FILES["azure"])
    cpu = azure["cpu_usage"].to_numpy() / (1.25 * azure["cpu_usage"].max())
    mem = azure["assigned_mem"].to_numpy() / (1.25 * azure["assigned_mem"].max())
    span = 10 * DAY_STEPS
    for k in range(len(azure) // span):
        cut = slice(k * span, (k + 1) * span)
        parts.append(
            _part(
                f"azure2019-p{k + 1}",
                {"cpu_utilisation": cpu[cut], "memory_utilisation": mem[cut]},
                start,
            )
        )
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.real_data", description=__doc__)
    parser.add_argument("dataset", choices=["datacenter-traces"])
    parser.add_argument("--source", type=Path, required=True, help="a copy of the repository")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--start", default="2026-01-05T00:00:00Z")
    parser.add_argument("--parts", help="comma-separated instances to keep (default: all)")
    parser.add_argument("--exclude", help="comma-separated instances to leave out")
    args = parser.parse_args(argv)
    frame = datacenter_traces(args.source, pd.Timestamp(args.start))
    if args.parts:
        frame = frame[frame["instance"].isin(args.parts.split(","))]
    if args.exclude:
        frame = frame[~frame["instance"].isin(args.exclude.split(","))]
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out / "server_metrics.parquet", index=False)
    print(
        f"{args.out / 'server_metrics.parquet'}: {frame['instance'].nunique()} instances, "
        f"{len(frame)} rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
