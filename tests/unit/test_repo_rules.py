"""Repository rules checked with the tests: lint, import contracts, configs, hygiene.

Tools come from the virtual environment that runs pytest (ruff, lint-imports, mypy) or from
Debian's packages (promtool, amtool, docker-compose). A missing Debian tool skips its test on a
developer machine and fails it under CI (`CI=true`), where `make test` has installed it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() == "true"
TIMEOUT_S = 300
MAX_FILE_BYTES = 5 * 1024 * 1024
HEAVY_MODULES = ("torch", "pytorch_forecasting", "lightning", "pytorch_lightning")
LIGHT_PACKAGES = ("simulator", "exporter")


def run(cmd: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in the repository root, capturing its output, with a deadline."""
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """Fail with the command's output unless it exited 0."""
    command = " ".join(str(a) for a in result.args)
    assert result.returncode == 0, (
        f"`{command}` exited {result.returncode}\n--- stdout\n{result.stdout}"
        f"\n--- stderr\n{result.stderr}"
    )


def venv_tool(name: str) -> str:
    """Path of a console script installed beside the interpreter running the tests."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}: run `make install`")
    return str(path)


def system_tool(name: str, package: str) -> str:
    """Path of a Debian-packaged binary: skipped when absent, except under CI."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found on PATH (Debian package {package}; `make apt` installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def repo_files() -> list[str]:
    """Tracked files plus untracked ones that git does not ignore, relative to the root."""
    result = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    assert_ok(result)
    return sorted({name for name in result.stdout.split("\0") if name})


# --- lint, format, import contracts, types ------------------------------------------------------


@pytest.mark.fault("H9")
def test_ruff_check_passes() -> None:
    assert_ok(run([venv_tool("ruff"), "check", "--no-cache", "."]))


def test_ruff_format_check_passes() -> None:
    assert_ok(run([venv_tool("ruff"), "format", "--check", "--no-cache", "."]))


def test_import_linter_contracts_hold() -> None:
    assert_ok(run([venv_tool("lint-imports"), "--no-cache"]))


def test_mypy_passes_on_configured_packages() -> None:
    assert_ok(run([venv_tool("mypy")], timeout=540))


# --- the light packages never pull in torch -----------------------------------------------------

_IMPORT_PROBE = """
import importlib, pkgutil, sys
package, walk, heavy = sys.argv[1], sys.argv[2] == "walk", set(sys.argv[3:])
module = importlib.import_module(package)
if walk:
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            importlib.import_module(info.name)
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""


@pytest.mark.parametrize("package", LIGHT_PACKAGES)
def test_import_of_light_package_leaves_torch_out(package: str) -> None:
    result = run([sys.executable, "-c", _IMPORT_PROBE, package, "top", *HEAVY_MODULES], 120)
    assert_ok(result)
    assert result.stdout.strip() == "", f"`import {package}` imported {result.stdout.strip()}"


@pytest.mark.parametrize("package", LIGHT_PACKAGES)
def test_every_module_of_light_package_leaves_torch_out(package: str) -> None:
    """Every submodule except `__main__` (run only as a program) imports without torch."""
    result = run([sys.executable, "-c", _IMPORT_PROBE, package, "walk", *HEAVY_MODULES], 120)
    assert_ok(result)
    assert result.stdout.strip() == "", f"{package}'s modules imported {result.stdout.strip()}"


# --- Prometheus and Alertmanager configuration ------------------------------------------------


@pytest.mark.prometheus
def test_promtool_check_config_passes() -> None:
    promtool = system_tool("promtool", "prometheus")
    assert_ok(run([promtool, "check", "config", "prometheus/prometheus.yml"]))


@pytest.mark.prometheus
@pytest.mark.fault("I1")
def test_promtool_check_rules_passes_on_every_rule_file() -> None:
    promtool = system_tool("promtool", "prometheus")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "prometheus" / "rules").glob("*.y*ml"))
    assert files, "prometheus/rules/ holds no rule file"
    assert_ok(run([promtool, "check", "rules", *files]))


@pytest.mark.prometheus
@pytest.mark.fault("I1", "I4")
def test_promtool_rule_unit_tests_pass() -> None:
    promtool = system_tool("promtool", "prometheus")
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "prometheus" / "tests").glob("*.y*ml"))
    if not files:
        pytest.skip("prometheus/tests/ holds no promtool rule test yet")
    assert_ok(run([promtool, "test", "rules", *files]))


@pytest.mark.prometheus
@pytest.mark.fault("I2")
def test_amtool_check_config_passes() -> None:
    amtool = system_tool("amtool", "prometheus-alertmanager")
    assert_ok(run([amtool, "check-config", "alertmanager/alertmanager.yml"]))


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=Watchdog", "severity=none"], "watchdog"),
        (
            ["alertname=NodeForecastFilesystemFull", "severity=critical", "instance=ppdb001"],
            "pagerduty-critical,slack-critical",
        ),
        (
            ["alertname=NodeForecastFilesystemFull", "severity=warning", "instance=ppdb001"],
            "slack-warning",
        ),
    ],
)
@pytest.mark.fault("I2")
def test_alertmanager_routes_alert_to_expected_receiver(labels: list[str], receiver: str) -> None:
    amtool = system_tool("amtool", "prometheus-alertmanager")
    cmd = [amtool, "config", "routes", "test", "--config.file=alertmanager/alertmanager.yml"]
    assert_ok(run([*cmd, f"--verify.receivers={receiver}", *labels]))


@pytest.mark.fault("I2")
def test_critical_inhibits_warning_for_same_instance_and_quantity() -> None:
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    rules = [
        (r.get("source_matchers", []), r.get("target_matchers", []), set(r.get("equal", [])))
        for r in config.get("inhibit_rules", [])
    ]
    assert any(
        any("critical" in m for m in source)
        and any("warning" in m for m in target)
        and {"instance", "quantity"} <= equal
        for source, target, equal in rules
    ), rules


# --- docker-compose (for users; validated without a Docker engine) -----------------------------


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"], 60).returncode == 0:
        return [docker, "compose"]
    return [system_tool("docker-compose", "docker-compose")]


def test_docker_compose_config_validates() -> None:
    result = run([*_compose_command(), "-f", "docker-compose.yml", "config", "-q"], 120)
    assert_ok(result)


def test_docker_compose_mounts_only_existing_repo_paths() -> None:
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    sources = [
        volume.split(":", 1)[0]
        for service in config["services"].values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and volume.startswith(".")
    ]
    assert sources
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert not missing, f"docker-compose.yml mounts paths absent from the repository: {missing}"


def test_dockerfile_pins_the_torch_version_of_the_makefile() -> None:
    make = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    docker = re.search(
        r"^RUN pip install .*torch==([\w.+]+)", (ROOT / "Dockerfile").read_text(), re.M
    )
    assert make and docker
    assert docker.group(1) == make.group(1)


# --- hygiene -------------------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib"}
UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _call_findings(call: ast.Call) -> list[str]:
    func = call.func
    found = []
    if isinstance(func, ast.Name) and func.id in {"eval", "exec"}:
        found.append(f"{func.id}()")
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else ""
        if owner == "yaml" and func.attr in UNSAFE_YAML:
            found.append(f"yaml.{func.attr}() (use yaml.safe_load)")
        weights_only = _keyword(call, "weights_only")
        if owner == "torch" and func.attr == "load" and not _is_true(weights_only):
            found.append("torch.load() without weights_only=True")
        if func.attr == "read_pickle":
            found.append("read_pickle()")
    shell = _keyword(call, "shell")
    if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
        found.append("shell=True")
    allow_pickle = _keyword(call, "allow_pickle")
    if _is_true(allow_pickle):
        found.append("allow_pickle=True")
    return found


def unsafe_constructs(source: str) -> list[tuple[int, str]]:
    """(line, what) for each construct that may run code from data or through a shell."""
    findings: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
            findings += [(node.lineno, f"import {n}") for n in sorted(names & UNSAFE_MODULES)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in UNSAFE_MODULES:
                findings.append((node.lineno, f"from {node.module} import"))
            if top == "yaml" and {a.name for a in node.names} & UNSAFE_YAML:
                findings.append((node.lineno, "from yaml import load"))
        elif isinstance(node, ast.Call):
            findings += [(node.lineno, what) for what in _call_findings(node)]
    return findings


@pytest.mark.fault("C5", "H9")
def test_unsafe_construct_scanner_flags_known_patterns() -> None:
    source = (
        "import pickle\nimport yaml, torch, subprocess\nyaml.load(s)\neval(x)\n"
        "torch.load(p)\nsubprocess.run(c, shell=True)\nmodel.eval()\nyaml.safe_load(s)\n"
        "torch.load(p, weights_only=True)\n"
    )
    assert [line for line, _ in unsafe_constructs(source)] == [1, 3, 4, 5, 6]


@pytest.mark.fault("C5", "H9")
def test_library_code_has_no_pickle_eval_unsafe_yaml_or_shell() -> None:
    findings = []
    for name in repo_files():
        if not name.endswith(".py") or name.startswith("tests/") or not (ROOT / name).exists():
            continue
        source = (ROOT / name).read_text(encoding="utf-8")
        findings += [f"{name}:{line}: {what}" for line, what in unsafe_constructs(source)]
    assert not findings, "\n".join(findings)


SECRET_PATTERNS = (
    re.compile(r"hooks\.slack\.com/services/T[A-Z0-9]+/"),
    re.compile(r"(routing|service|integration)_key\s*[:=]\s*['\"]?[0-9a-f]{32}\b"),
)


@pytest.mark.fault("H4")
def test_no_chat_or_paging_secret_in_repo() -> None:
    hits = []
    for name in repo_files():
        path = ROOT / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        hits += [f"{name}: {p.pattern}" for p in SECRET_PATTERNS if p.search(text)]
    assert not hits, "\n".join(hits)


def test_no_file_over_5_mb_in_repo() -> None:
    large = [
        f"{name}: {(ROOT / name).lstat().st_size / 1024**2:.1f} MiB"
        for name in repo_files()
        if (ROOT / name).is_file() and (ROOT / name).lstat().st_size > MAX_FILE_BYTES
    ]
    assert not large, "\n".join(large)
