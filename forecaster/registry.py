"""Model registry: versioned directories, a manifest of hashes, an atomic current pointer.

Layout under the registry root::

    current.json            {"version": ..., "previous": ...}, replaced atomically
    <version>/              model.safetensors, model_config.json, dataset_parameters.json,
                            server_mapping.json, backtest.json, training_info.json (manifest)
    .tmp-<version>-<pid>/   a version being written; renamed into place when complete

Only files the manifest lists are ever opened, and only `.safetensors` and `.json` files:
a pickle planted next to a model is never read. Versions are checked (hashes, contract
version) before they are loaded or promoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

POINTER = "current.json"
MANIFEST = "training_info.json"
TMP_PREFIX = ".tmp-"
VERSION_RE = re.compile(r"^[0-9a-z_.-]{1,64}$")
ALLOWED_SUFFIXES = (".safetensors", ".json")
MAX_FILE_NAME = 128  # the longest file name a manifest may list (its schema's limit)
KEEP_VERSIONS = 3


class RegistryError(Exception):
    """A version that cannot be used; `reason` is one of a small fixed set (`invalid`: the
    hashes verify but an artefact fails its schema, see `forecaster.model.schema`)."""

    REASONS = ("missing", "checksum", "contract", "corrupt", "invalid_name", "invalid")

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def new_version(now: datetime | None = None) -> str:
    """A version name that sorts by time: v20261123-120501."""
    moment = now or datetime.now(UTC)
    return moment.strftime("v%Y%m%d-%H%M%S")


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file, fsync it, `os.replace` it over `path`, fsync the directory."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(json.dumps(data, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _listable(name: object) -> bool:
    """Whether a manifest may list `name`: a plain file name in the version's directory."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_FILE_NAME
        and "/" not in name
        and "\x00" not in name
        and name.endswith(ALLOWED_SUFFIXES)
    )


@dataclass(frozen=True)
class Manifest:
    """The parsed training_info.json of a version."""

    version: str
    contract_version: str
    files: dict[str, str]  # name -> sha256
    info: dict[str, Any]


class Registry:
    """A directory of model versions with a current pointer.

    `check_artefacts` (the default) makes `checked`, and so `promote` and `rollback`, refuse a
    version whose artefacts fail their schemas (`forecaster.model.schema.check_version`), not
    only one whose hashes or contract differ; off only for registries of stand-in files.
    """

    def __init__(self, root: Path, *, check_artefacts: bool = True) -> None:
        self.root = root
        self.check_artefacts = check_artefacts

    def path(self, version: str) -> Path:
        """Directory of `version`; the name is validated so it cannot leave the root."""
        if not isinstance(version, str) or not VERSION_RE.match(version) or version[0] == ".":
            raise RegistryError("invalid_name", f"invalid model version name {version!r}")
        return self.root / version

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
        return sorted(n for n in names if VERSION_RE.match(n) and not n.startswith("."))

    def pointer(self) -> dict[str, str | None]:
        """The current pointer ({"version": None, ...} when there is none); an unreadable one
        raises OSError, ValueError or AttributeError (what `ModelHolder.check` handles)."""
        path = self.root / POINTER
        if not path.is_file():
            return {"version": None, "previous": None}
        try:
            data = json.loads(path.read_text())
        except RecursionError:  # JSON nested deeper than the interpreter's limit
            raise ValueError(f"{path}: JSON nested too deeply") from None
        return {"version": data.get("version"), "previous": data.get("previous")}

    def current(self) -> str | None:
        """The version the pointer names, if any."""
        return self.pointer()["version"]

    def verify(self, version: str, contract_version: str) -> Manifest:
        """Check the manifest, every listed file's hash and the contract version."""
        directory = self.path(version)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise RegistryError("missing", f"{version}: no {MANIFEST} in {directory}")
        try:
            info = json.loads(manifest_path.read_text())
            files = dict(info["files"])
            found = str(info["contract_version"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise RegistryError("corrupt", f"{version}: unreadable {MANIFEST}: {exc}") from None
        if found != contract_version:
            raise RegistryError(
                "contract",
                f"{version}: model built for data contract {found}, this forecaster speaks "
                f"{contract_version}",
            )
        for name, expected in files.items():
            if not _listable(name):
                raise RegistryError("corrupt", f"{version}: manifest lists {name!r}")
            path = directory / name
            try:
                if not path.is_file():
                    raise RegistryError("missing", f"{version}: {name} is missing")
                digest = sha256_of(path)
            except OSError as exc:
                raise RegistryError("corrupt", f"{version}: cannot read {name}: {exc}") from None
            if digest != expected:
                raise RegistryError("checksum", f"{version}: {name} does not match its sha256")
        return Manifest(version, found, files, info)

    @contextmanager
    def staging(self, version: str) -> Iterator[Path]:
        """A temporary directory for a new version; removed if the block fails."""
        self.path(version)  # validate the name
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{version}-{os.getpid()}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def commit(self, staged: Path, version: str, info: dict[str, Any]) -> Path:
        """Hash the staged files, write the manifest and rename the directory into place."""
        files = {
            p.name: sha256_of(p)
            for p in sorted(staged.iterdir())
            if p.is_file() and p.name != MANIFEST and p.name.endswith(ALLOWED_SUFFIXES)
        }
        write_json_atomic(staged / MANIFEST, {**info, "version": version, "files": files})
        target = self.path(version)
        if target.exists():
            raise RegistryError("invalid_name", f"version {version} already exists")
        os.replace(staged, target)
        _fsync_dir(self.root)
        return target

    def amend(self, version: str, name: str, data: Any, contract_version: str) -> None:
        """Add or replace one JSON file of a verified version and re-hash it in the manifest.

        Used to attach a backtest to a version after training; the file and then the
        manifest are each replaced atomically.
        """
        if "/" in name or not name.endswith(".json") or name == MANIFEST:
            raise RegistryError("invalid_name", f"cannot amend {name!r}")
        manifest = self.verify(version, contract_version)
        directory = self.path(version)
        write_json_atomic(directory / name, data)
        files = {**manifest.files, name: sha256_of(directory / name)}
        write_json_atomic(directory / MANIFEST, {**manifest.info, "files": files})

    def checked(self, version: str, contract_version: str) -> Manifest:
        """`verify`, then every artefact against its schema (`check_artefacts`): what a version
        must pass before it is loaded or pointed at; RegistryError("invalid") if one fails."""
        manifest = self.verify(version, contract_version)
        if self.check_artefacts:
            from forecaster.model.schema import ArtefactError, check_version

            try:
                check_version(self.path(version), manifest.files)
            except ArtefactError as exc:
                raise RegistryError("invalid", f"{version}: {exc}") from None
        return manifest

    def promote(self, version: str, contract_version: str) -> None:
        """Point `current` at a `checked` `version`, remembering the one it replaces."""
        self.checked(version, contract_version)
        previous = self.current()
        if previous == version:
            return
        write_json_atomic(self.root / POINTER, {"version": version, "previous": previous})

    def rollback(self, contract_version: str) -> str:
        """Point back at the previous version (it must still pass `checked`); returns it."""
        pointer = self.pointer()
        previous = pointer["previous"]
        if previous is None:
            raise RegistryError("missing", "no previous version to roll back to")
        self.checked(previous, contract_version)
        write_json_atomic(
            self.root / POINTER, {"version": previous, "previous": pointer["version"]}
        )
        return previous

    def collect_garbage(self, keep: int = KEEP_VERSIONS) -> list[str]:
        """Delete the oldest versions beyond `keep`, never the current or previous one."""
        pointer = self.pointer()
        protected = {pointer["version"], pointer["previous"]}
        versions = self.versions()
        removable = [v for v in versions[: max(0, len(versions) - keep)] if v not in protected]
        for version in removable:
            shutil.rmtree(self.root / version)
        return removable

    def remove_stale_tmp(self) -> list[str]:
        """Remove half-written versions left by a killed writer (run at start-up)."""
        if not self.root.is_dir():
            return []
        stale = [p for p in self.root.iterdir() if p.name.startswith(TMP_PREFIX)]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return [p.name for p in stale]
