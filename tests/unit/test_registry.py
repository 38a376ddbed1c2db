"""Model registry: hashes, contract version, atomic pointer, rollback, garbage collection.

The versions here are stand-in files, so the registries skip the artefact schemas
(`check_artefacts=False`); tests/unit/test_model_artefacts.py checks those on real versions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from forecaster.registry import MANIFEST, POINTER, Registry, RegistryError, new_version

CONTRACT = "1.0.0"


def _version(registry: Registry, name: str, contract: str = CONTRACT) -> Path:
    with registry.staging(name) as staged:
        (staged / "model.safetensors").write_bytes(os.urandom(64))
        (staged / "model_config.json").write_text('{"hidden_size": 4}')
        return registry.commit(staged, name, {"contract_version": contract})


def test_committed_version_verifies_and_lists_every_file_hash(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    path = _version(registry, "v1")
    manifest = registry.verify("v1", CONTRACT)
    assert set(manifest.files) == {"model.safetensors", "model_config.json"}
    assert json.loads((path / MANIFEST).read_text())["version"] == "v1"
    assert registry.versions() == ["v1"]


@pytest.mark.fault("C3")
def test_a_changed_file_is_refused_with_reason_checksum(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    path = _version(registry, "v1")
    (path / "model_config.json").write_text('{"hidden_size": 5}')
    with pytest.raises(RegistryError) as error:
        registry.verify("v1", CONTRACT)
    assert error.value.reason == "checksum"


def test_a_missing_file_is_refused(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    (_version(registry, "v1") / "model.safetensors").unlink()
    with pytest.raises(RegistryError) as error:
        registry.verify("v1", CONTRACT)
    assert error.value.reason == "missing"


@pytest.mark.fault("C4")
def test_a_wrong_contract_version_is_refused_naming_both(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    _version(registry, "v1", contract="0.9.0")
    with pytest.raises(RegistryError, match=r"0\.9\.0.*1\.0\.0") as error:
        registry.verify("v1", CONTRACT)
    assert error.value.reason == "contract"


@pytest.mark.fault("C5")
def test_a_manifest_naming_a_pickle_is_refused(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    path = _version(registry, "v1")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["model.pkl"] = "0" * 64
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RegistryError) as error:
        registry.verify("v1", CONTRACT)
    assert error.value.reason == "corrupt"


@pytest.mark.parametrize("name", ["../etc", "a/b", ".tmp-x", "UPPER", "", "x" * 65])
@pytest.mark.fault("H6")
def test_version_names_cannot_escape_the_registry(tmp_path, name):
    with pytest.raises(RegistryError) as error:
        Registry(tmp_path, check_artefacts=False).path(name)
    assert error.value.reason == "invalid_name"


@pytest.mark.fault("D6")
def test_promotion_swaps_the_pointer_and_rollback_swaps_it_back(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    for name in ("v1", "v2"):
        _version(registry, name)
    registry.promote("v1", CONTRACT)
    registry.promote("v2", CONTRACT)
    assert registry.pointer() == {"version": "v2", "previous": "v1"}
    assert registry.rollback(CONTRACT) == "v1"
    assert registry.current() == "v1"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.fault("C3")
def test_a_version_that_fails_verification_is_never_promoted(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    _version(registry, "v1")
    registry.promote("v1", CONTRACT)
    bad = _version(registry, "v2")
    (bad / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError):
        registry.promote("v2", CONTRACT)
    assert registry.current() == "v1"


@pytest.mark.fault("D6")
def test_garbage_collection_keeps_three_and_never_current_or_previous(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    for name in ("v1", "v2", "v3", "v4", "v5"):
        _version(registry, name)
    registry.promote("v1", CONTRACT)
    registry.promote("v2", CONTRACT)
    assert registry.collect_garbage(keep=3) == []  # v1, v2 protected; v3-v5 are the newest
    registry.promote("v5", CONTRACT)
    assert registry.collect_garbage(keep=3) == ["v1"]
    assert registry.versions() == ["v2", "v3", "v4", "v5"][-4:]


@pytest.mark.fault("D2", "E1")
def test_a_failed_write_leaves_no_version_behind(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    with pytest.raises(OSError), registry.staging("v1") as staged:
        (staged / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")
    assert registry.versions() == []
    assert list(tmp_path.iterdir()) == []


WRITER = """
import sys
from pathlib import Path
from forecaster.registry import Registry
registry = Registry(Path(sys.argv[1]), check_artefacts=False)
with registry.staging("v2") as staged:
    (staged / "model.safetensors").write_bytes(b"x" * 1024)
    print("writing", flush=True)
    sys.stdin.readline()  # mid-write until killed
"""


@pytest.mark.fault("D1")
def test_sigkill_while_writing_leaves_the_pointer_and_no_final_version(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    _version(registry, "v1")
    registry.promote("v1", CONTRACT)
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert registry.versions() == ["v1"] and registry.current() == "v1"
    stale = registry.remove_stale_tmp()
    assert len(stale) == 1 and stale[0].startswith(".tmp-v2-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [POINTER, "v1"]


def test_version_names_sort_by_time_and_are_valid(tmp_path):
    earlier = new_version(datetime(2026, 11, 23, 9, 59, 59, tzinfo=UTC))
    later = new_version(datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC))
    assert earlier == "v20261123-095959" and later > earlier
    assert Registry(tmp_path, check_artefacts=False).path(later) == tmp_path / later


@pytest.mark.fault("H6")
def test_amending_a_version_rehashes_its_manifest(tmp_path):
    registry = Registry(tmp_path, check_artefacts=False)
    _version(registry, "v1")
    registry.amend("v1", "backtest.json", {"nql": 0.1}, CONTRACT)
    manifest = registry.verify("v1", CONTRACT)
    assert "backtest.json" in manifest.files
    with pytest.raises(RegistryError):
        registry.amend("v1", "../x.json", {}, CONTRACT)
