"""A model version's artefacts are checked against their schemas before anything is built.

The shipped versions are the good fixtures, copied into tmp_path; each bad version is one of
them with a single change and its manifest re-hashed, so that only the schema can refuse it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from forecaster.config import load_config
from forecaster.model.config import TFTConfig
from forecaster.model.schema import ArtefactError, ConfigSection, check_bundle, check_version
from forecaster.registry import MANIFEST, POINTER, Registry, RegistryError, sha256_of
from forecaster.serving import LoadedModel, ModelHolder, load_version

MODELS = Path(__file__).resolve().parents[2] / "models"
CONTRACT = "1.0.0"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """The shipped registry, copied: default-v4 current, default-v3 previous."""
    root = tmp_path / "models"
    shutil.copytree(MODELS, root)
    pointer = json.loads((root / POINTER).read_text())
    assert pointer == {"version": "default-v4", "previous": "default-v3"}
    return Registry(root)


def listed(registry: Registry, version: str) -> list[str]:
    return list(json.loads((registry.path(version) / MANIFEST).read_text())["files"])


def rehash(registry: Registry, version: str, name: str) -> None:
    """Record `name`'s new hash in the manifest, as a tool re-packaging the version would."""
    path = registry.path(version) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["files"][name] = sha256_of(registry.path(version) / name)
    path.write_text(json.dumps(manifest))


def edit(registry: Registry, version: str, name: str, change: Callable[[dict], object]) -> None:
    path = registry.path(version) / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    rehash(registry, version, name)
    registry.verify(version, CONTRACT)  # the hashes pass: only the schema can tell


def refusal(registry: Registry, files: list[str] | None = None) -> str:
    """The one-line reason `check_version` refuses default-v4 with."""
    directory = registry.path("default-v4")
    with pytest.raises(ArtefactError) as caught:
        check_version(directory, listed(registry, "default-v4") if files is None else files)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300
    return message


def put(*keys: str | int, value: object) -> Callable[[dict], None]:
    """A change setting data[keys[0]][keys[1]]... to `value`."""

    def change(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


@pytest.mark.parametrize("version", ["default-v2", "default-v3", "default-v4"])
def test_every_shipped_version_passes_its_schemas(registry, version):
    registry.verify(version, CONTRACT)
    check_version(registry.path(version), listed(registry, version))


def test_the_config_schema_names_every_field_of_the_model_config_class():
    assert set(ConfigSection.model_fields) == {f.name for f in dataclasses.fields(TFTConfig)}
    assert ConfigSection().model_dump() == TFTConfig().to_json()


MODEL_CONFIG_DEFECTS = [
    (("config", "horizon"), "ninety-six", "config.horizon: Input should be a valid integer"),
    (("config", "hidden_size"), 1e9, "config.hidden_size: Input should be a valid integer"),
    (("config", "hidden_size"), 10**9, "config.hidden_size: Input should be less than"),
    (("config", "hidden_size"), -16, "config.hidden_size: Input should be greater than"),
    (("config", "min_encoder_length"), -5, "config.min_encoder_length: Input should be greater"),
    (("config", "min_encoder_length"), 500, "min_encoder_length 500 exceeds encoder_length 288"),
    (("config", "quantiles"), [0.5, 0.1, 0.9], "config.quantiles: must be increasing"),
    (("config", "quantiles"), [0.1, 0.9], "config.quantiles: must include 0.5"),
    (("config", "dropout"), True, "config.dropout: Input should be a valid number"),
    (("config", "transformations"), {"disk_io": "cube"}, "config.transformations.disk_io"),
    (("config", "transformations"), {"load1": "log"}, "not targets: load1"),
    (("config", "surprise"), 1, "config.surprise: Extra inputs are not permitted"),
    (("hparams", "max_encoder_length"), 1e308, "hparams.max_encoder_length: Input should be"),
    (("hparams", "max_encoder_length"), 144, "hparams.max_encoder_length is 144"),
    (("hparams", "hidden_size"), 32, "hparams.hidden_size is 32"),
    (("hparams", "lstm_layers"), 0, "hparams.lstm_layers: Input should be greater"),
    (("hparams", "output_size"), [3, 3, 3, 3], "hparams.output_size is [3, 3, 3, 3]"),
    (("hparams", "x_reals", 0), "mystery", "hparams.x_reals"),
    (("hparams", "embedding_sizes", "host"), [22, -9], "hparams.embedding_sizes.host.1"),
    (("hparams", "embedding_sizes", "host"), [23, 9], "embedding_sizes.host has 23 classes"),
    (("loss", "weights", 0), float("inf"), "loss.weights.0: Input should be a finite number"),
    (("loss", "quantiles"), [0.05, 0.5, 0.95], "loss.quantiles is [0.05, 0.5, 0.95]"),
    (("output_transformer", "params", "normalizers"), [], "output_transformer has 0 normal"),
]


@pytest.mark.parametrize(("keys", "value", "message"), MODEL_CONFIG_DEFECTS)
@pytest.mark.fault("C4")
def test_a_defective_model_config_is_refused_naming_file_field_and_problem(
    registry, keys, value, message
):
    edit(registry, "default-v4", "model_config.json", put(*keys, value=value))
    reason = refusal(registry)
    assert reason.startswith("model_config.json: ") and message in reason


DATASET_DEFECTS = [
    (("max_prediction_length",), 48, "max_prediction_length is 48, model_config says 96"),
    (("min_encoder_length",), 12, "min_encoder_length is 12, model_config says 36"),
    (("target",), ["cpu_utilisation"], "target is ['cpu_utilisation']"),
    (("add_target_scales",), False, "add_target_scales: Input should be True"),
    (("scalers", "load1", "state", "scale_", "data"), [0.0], "scalers.load1: scale_ must be"),
    (("scalers", "load1", "state", "mean_", "data"), [1.0, 2.0], "scalers.load1.state.mean_"),
    (("scalers", "load1", "__type__"), "os.system", "scalers.load1"),
    (("scalers", "load1", "params", "copy"), "yes", "scalers.load1.params.copy"),
    (("target_normalizer", "params", "normalizers", 3, "params", "transformation"), None, "log1p"),
    (("categorical_encoders", "host", "state", "classes_", "nan"), 7, "classes_ must number"),
]


@pytest.mark.parametrize(("keys", "value", "message"), DATASET_DEFECTS)
@pytest.mark.fault("C4")
def test_defective_dataset_parameters_are_refused(registry, keys, value, message):
    edit(registry, "default-v4", "dataset_parameters.json", put(*keys, value=value))
    reason = refusal(registry)
    assert reason.startswith("dataset_parameters.json: ") and message in reason


def test_scalers_missing_for_a_model_input_are_refused(registry):
    edit(registry, "default-v4", "dataset_parameters.json", lambda d: d["scalers"].pop("load1"))
    assert refusal(registry) == "dataset_parameters.json: scalers: no scaler for load1"


@pytest.mark.fault("C4")
def test_consistent_json_with_weights_of_another_shape_is_refused(registry):
    """Both JSON files agree on hidden_size 32; the weights were trained with 16."""

    def wider(data: dict) -> None:
        data["config"]["hidden_size"] = 32
        data["hparams"]["hidden_size"] = 32

    edit(registry, "default-v4", "model_config.json", wider)
    assert refusal(registry) == (
        "model.safetensors: lstm_encoder.weight_ih_l0 has shape [64, 16], "
        "model_config implies [128, 32]"
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-100], "the tensors need"),
        (lambda raw: (10**9).to_bytes(8, "little") + raw[8:], "header of 1000000000 bytes"),
        (lambda raw: raw[:8] + b"[" * 8 + raw[16:], "header is not a JSON object"),
        (lambda raw: raw.replace(b'"F32"', b'"XYZ"', 1), "dtype"),
    ],
)
@pytest.mark.fault("C2")
def test_a_damaged_weights_header_is_refused(registry, damage, message):
    path = registry.path("default-v4") / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    rehash(registry, "default-v4", "model.safetensors")
    reason = refusal(registry)
    assert reason.startswith("model.safetensors: ") and message in reason


@pytest.mark.parametrize(
    ("name", "keys", "value", "message"),
    [
        ("calibration.json", ("lower", 0), [1.0] * 95, "one row per target, all of one length"),
        ("calibration.json", ("upper",), [[1.0] * 48] * 5, "lower and upper rows differ"),
        ("calibration.json", ("upper", 1, 0), -1.0, "upper.1.0: Input should be greater"),
        ("calibration.json", ("targets", 0), "cpu_usage", "calibrates cpu_usage"),
        ("calibration.json", ("version",), 2, "version: Input should be 1"),
        ("server_mapping.json", ("servers", "ppdb001", "id"), "0" * 16, "ppdb001 is not"),
        ("server_mapping.json", ("servers", "ppdb001", "id"), "xyz", "servers.ppdb001.id"),
        ("backtest.json", ("quantiles",), "p10", "backtest.json: quantiles"),
        ("training_info.json", ("contract_version",), 1, "training_info.json: contract_version"),
    ],
)
def test_every_other_artefact_is_checked_too(registry, name, keys, value, message):
    path = registry.path("default-v4") / name
    data = json.loads(path.read_text())
    put(*keys, value=value)(data)
    path.write_text(json.dumps(data))
    if name != MANIFEST:
        rehash(registry, "default-v4", name)
    reason = refusal(registry)
    assert reason.startswith(f"{name}: ") and message in reason


def test_a_calibration_shorter_than_the_horizon_is_refused(registry):
    def shorter(data: dict) -> None:
        data["lower"] = [row[:48] for row in data["lower"]]
        data["upper"] = [row[:48] for row in data["upper"]]

    edit(registry, "default-v4", "calibration.json", shorter)
    assert refusal(registry) == (
        "calibration.json: lower.0 has 48 horizon steps, the model forecasts 96"
    )


@pytest.mark.fault("C2")
def test_json_nested_beyond_the_parser_is_refused_not_a_crash(registry):
    path = registry.path("default-v4") / "backtest.json"
    path.write_text('{"curves": ' + "[" * 100_000 + "]" * 100_000 + "}")
    rehash(registry, "default-v4", "backtest.json")
    assert refusal(registry) == "backtest.json: not valid JSON (nested too deeply)"


def test_every_file_the_loader_reads_must_be_listed_in_the_manifest(registry):
    path = registry.path("default-v4") / MANIFEST
    manifest = json.loads(path.read_text())
    del manifest["files"]["calibration.json"]
    path.write_text(json.dumps(manifest))
    files = listed(registry, "default-v4")
    assert refusal(registry, files) == (
        "calibration.json: present but not in the manifest, so never verified"
    )
    without_config = [f for f in files if f != "model_config.json"]
    assert refusal(registry, without_config) == "model_config.json: not in the manifest"


def test_a_bundle_outside_a_registry_is_checked_without_a_manifest(registry):
    directory = registry.path("default-v4")
    (directory / MANIFEST).unlink()
    (directory / "server_mapping.json").unlink()
    check_bundle(directory)
    edit_plain = json.loads((directory / "model_config.json").read_text())
    edit_plain["config"]["horizon"] = "ninety-six"
    (directory / "model_config.json").write_text(json.dumps(edit_plain))
    with pytest.raises(ArtefactError) as caught:
        check_bundle(directory)
    assert str(caught.value) == (
        "model_config.json: config.horizon: Input should be a valid integer"
    )


def test_a_version_is_checked_without_importing_torch(registry):
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from forecaster.model.schema import check_version\n"
        "directory = Path(sys.argv[1])\n"
        "files = json.loads((directory / 'training_info.json').read_text())['files']\n"
        "check_version(directory, files)\n"
        "heavy = ('torch', 'pytorch_forecasting', 'lightning')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(registry.path("default-v4"))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]"


# --- the model holder ----------------------------------------------------------------------------


def settings(registry: Registry):
    return load_config(["--model.dir", str(registry.root), "--model.device", "cpu"], {}).model


class FakeLoader:
    """Refuses the versions in `invalid` the way `load_version` refuses a schema failure."""

    def __init__(self, invalid: set[str]) -> None:
        self.invalid = invalid
        self.calls: list[str] = []

    def __call__(self, registry, version, contract, settings):
        self.calls.append(version)
        if version in self.invalid:
            raise RegistryError("invalid", f"{version}: model_config.json: config.horizon: bad")
        return LoadedModel(version, predictor=object(), device="cpu")


def point(registry: Registry, version: str, previous: str | None) -> None:
    (registry.root / POINTER).write_text(json.dumps({"version": version, "previous": previous}))


@pytest.mark.fault("C2")
def test_a_start_on_a_refused_version_serves_the_previous_one(registry, caplog):
    loader = FakeLoader({"default-v4"})
    holder = ModelHolder(settings(registry), CONTRACT, loader=loader)
    with caplog.at_level(logging.INFO, logger="forecaster.serving"):
        assert holder.check().version == "default-v3"
        assert holder.check().version == "default-v3"
    assert loader.calls == ["default-v4", "default-v3"]  # neither is retried every poll
    assert holder.failures == {"invalid": 1}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "model refused (invalid): default-v4: model_config.json: config.horizon: bad; "
        "trying the previous version default-v3"
    ]
    assert any("default-v3 loaded" in r.getMessage() for r in caplog.records)


@pytest.mark.fault("C1")
def test_when_the_previous_version_is_refused_too_the_heuristic_serves(registry, caplog):
    loader = FakeLoader({"default-v4", "default-v3"})
    holder = ModelHolder(settings(registry), CONTRACT, loader=loader)
    with caplog.at_level(logging.ERROR, logger="forecaster.serving"):
        assert holder.check() is None
        assert holder.check() is None
    assert loader.calls == ["default-v4", "default-v3"]
    assert holder.failures == {"invalid": 2}
    assert [r.getMessage().endswith("the heuristic keeps serving") for r in caplog.records] == [
        False,
        True,
    ]


@pytest.mark.fault("C2")
def test_a_refused_promotion_while_serving_keeps_the_serving_model(registry):
    loader = FakeLoader({"default-v5"})
    holder = ModelHolder(settings(registry), CONTRACT, loader=loader)
    assert holder.check().version == "default-v4"
    point(registry, "default-v5", "default-v4")
    assert holder.check().version == "default-v4"
    assert loader.calls == ["default-v4", "default-v5"]  # nothing else is tried while serving
    holder.reload_now()
    assert holder.check().version == "default-v4"
    assert loader.calls == ["default-v4", "default-v5", "default-v5"]


@pytest.mark.torch
@pytest.mark.fault("C4")
def test_the_real_loader_refuses_a_bad_version_before_building_and_falls_back(registry, caplog):
    pytest.importorskip("torch")
    edit(registry, "default-v4", "model_config.json", put("config", "horizon", value="ninety-six"))
    with pytest.raises(RegistryError) as refused:
        load_version(registry, "default-v4", CONTRACT, settings(registry))
    assert refused.value.reason == "invalid"
    assert str(refused.value).startswith("default-v4: model_config.json: config.horizon: ")
    holder = ModelHolder(settings(registry), CONTRACT)
    with caplog.at_level(logging.ERROR, logger="forecaster.serving"):
        serving = holder.check()
    assert serving is not None and serving.version == "default-v3"
    assert serving.predictor.config.horizon == 96
    assert holder.failures == {"invalid": 1}
    assert len(caplog.records) == 1


def test_promote_and_rollback_refuse_a_version_whose_artefacts_fail_their_schemas(registry):
    """The hashes of both edited versions pass; the schema check is what keeps the pointer."""
    edit(registry, "default-v3", "model_config.json", put("config", "horizon", value=-4))
    with pytest.raises(RegistryError) as promoted:
        registry.promote("default-v3", CONTRACT)
    assert promoted.value.reason == "invalid" and "horizon" in str(promoted.value)
    with pytest.raises(RegistryError) as rolled_back:
        registry.rollback(CONTRACT)  # previous is the edited default-v3
    assert rolled_back.value.reason == "invalid"
    assert registry.pointer() == {"version": "default-v4", "previous": "default-v3"}
    unchecked = Registry(registry.root, check_artefacts=False)
    unchecked.promote("default-v3", CONTRACT)  # only hashes and contract: it passes
    assert registry.current() == "default-v3"
