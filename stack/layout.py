"""The stack's work directory: where each file lives, and the config copies written into it.

The repository's configs are read, never changed: Prometheus runs on a work copy (intervals
patched if asked, file_sd targets next to it), Alertmanager on the repository file or, with the
local webhook receiver, on a copy whose notifiers all post to that receiver.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stack import plan
from stack.process import StackError

WORKDIR_MARKER = ".stack-workdir"


@dataclass(frozen=True)
class Layout:
    """Where everything lives inside the work directory."""

    workdir: Path

    @property
    def history(self) -> Path:
        """Output of `simulator history` (parquet, metadata, openmetrics.txt)."""
        return self.workdir / "history"

    @property
    def prometheus_config(self) -> Path:
        """The work copy of prometheus.yml; rules/ and targets/ sit next to it."""
        return self.workdir / "prometheus" / "prometheus.yml"

    @property
    def targets(self) -> Path:
        """file_sd directory read by the work copy of the Prometheus config."""
        return self.prometheus_config.parent / "targets"

    @property
    def tsdb(self) -> Path:
        """Prometheus storage, holding the backfilled blocks."""
        return self.workdir / "data" / "prometheus"

    @property
    def alertmanager_data(self) -> Path:
        """Alertmanager storage (silences, notification log)."""
        return self.workdir / "data" / "alertmanager"

    @property
    def alertmanager_config(self) -> Path:
        """The generated Alertmanager config (notifiers replaced by the local receiver)."""
        return self.workdir / "alertmanager" / "alertmanager.yml"

    @property
    def forecaster_state(self) -> Path:
        """The forecaster's state directory (its persisted snapshot and lock)."""
        return self.workdir / "data" / "forecaster"

    def log(self, name: str) -> Path:
        """The output file of the process `name`."""
        return self.workdir / "logs" / f"{name}.log"


def prometheus_config_source(repo_root: Path) -> Path:
    """The repository's Prometheus config, copied (and patched if asked) into the work dir."""
    return repo_root / "prometheus" / "prometheus.yml"


def alertmanager_config_source(repo_root: Path) -> Path:
    """The repository's Alertmanager config: run in place, or copied with local receivers."""
    return repo_root / "alertmanager" / "alertmanager.yml"


def prepare_workdir(path: Path) -> None:
    """Make `path` an empty work directory, wiping it only if a stack made it."""
    if path.exists() and any(path.iterdir()) and not (path / WORKDIR_MARKER).exists():
        raise StackError(
            f"refusing to wipe {path}: it is not empty and was not made by the stack"
            f" (no {WORKDIR_MARKER} file); pass an empty or new --workdir"
        )
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / WORKDIR_MARKER).write_text("made by `python -m stack`; wiped at every start\n")


def write_json(path: Path, content: Any) -> None:
    """Write JSON atomically, so Prometheus never reads a half-written file_sd file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(content, indent=2) + "\n")
    partial.replace(path)


def write_prometheus_config(
    repo_root: Path, layout: Layout, interval_s: int | None, rules_dir: Path | None = None
) -> float:
    """Copy prometheus.yml and rules/ (or `rules_dir` instead) into the work dir, patching
    intervals if asked.

    Returns the node job's scrape interval in the copy: the spacing the history must have.
    """
    source = prometheus_config_source(repo_root)
    document = yaml.safe_load(source.read_text())
    rules_target = layout.prometheus_config.parent / "rules"
    shutil.copytree(rules_dir if rules_dir is not None else source.parent / "rules", rules_target)
    if interval_s is not None:
        document = plan.patch_prometheus_config(document, interval_s)
        for rule_file in sorted(rules_target.glob("*.yml")):
            patched = plan.patch_rule_groups(yaml.safe_load(rule_file.read_text()), interval_s)
            rule_file.write_text(yaml.safe_dump(patched, sort_keys=False))
    layout.prometheus_config.write_text(yaml.safe_dump(document, sort_keys=False))
    return plan.scrape_interval_of(document, plan.NODE_JOB)


def write_alertmanager_config(repo_root: Path, layout: Layout, webhook_url: str | None) -> Path:
    """The Alertmanager config to run: the repository's, or a work copy posting to `webhook_url`.

    The copy keeps routes, inhibit rules and templates; it is written only when `webhook_url`
    is given and the repository file has receivers that notify something.
    """
    source = alertmanager_config_source(repo_root)
    if webhook_url is None:
        return source
    document = yaml.safe_load(source.read_text()) or {}
    patched = plan.local_webhook_alertmanager_config(document, webhook_url, source.parent)
    if patched is None:
        return source
    target = layout.alertmanager_config
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        f"# Generated by `python -m stack` from {source}: every notifier posts to {webhook_url}.\n"
        + yaml.safe_dump(patched, sort_keys=False)
    )
    return target
