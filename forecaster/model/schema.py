"""Schemas of a model version's artefacts, checked before anything is built from them.

Hashes prove that a version's files are those its manifest names, not that a model can be
built from them: a `model_config.json` with `"horizon": "ninety-six"` or `"hidden_size": 1e9`
verifies as well as a good one. `check_version` reads every file of a version (each JSON
artefact, and of the safetensors file only its header) and checks types, ranges and that the
model configuration, the network's hyper-parameters, the dataset parameters, the weights'
shapes and the calibration agree with one another. A problem raises `ArtefactError`, one line
naming the file, the field and what is wrong. Neither torch nor pytorch-forecasting is
imported here, so a bad version is refused before either loads.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from forecaster.features import CALENDAR, host_id
from forecaster.model.calibration import FILENAME as CALIBRATION
from forecaster.model.config import TFTConfig
from forecaster.registry import MANIFEST

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
DATASET_PARAMETERS = "dataset_parameters.json"
SERVER_MAPPING = "server_mapping.json"
BACKTEST = "backtest.json"
REQUIRED = (WEIGHTS, MODEL_CONFIG, DATASET_PARAMETERS)
# Bounds that keep a model buildable on a forecaster host (the shipped one is 16 wide, 288 long).
MAX_ENCODER_LENGTH = 8064  # 28 days of 5-minute steps
MAX_HORIZON = 2016  # 7 days
MAX_WIDTH = 1024  # hidden sizes and embedding dimensions
MAX_HEADS = 64
MAX_LSTM_LAYERS = 8
MAX_CLASSES = 1_000_000  # categories of one label encoder
MAX_QUANTITIES = 256
MAX_CALIBRATION_FACTOR = 100.0
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024 * 1024
NORMALIZERS = {"mean": "EncoderNormalizer", "last": "LastValueNormalizer"}
STATIC_CATEGORICALS = ("profile", "host")  # what forecaster.model.fast feeds the network
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Names = Annotated[list[Name], Field(max_length=MAX_QUANTITIES)]
Steps = Annotated[int, Field(ge=1, le=MAX_ENCODER_LENGTH)]
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]
Share = Annotated[float, Field(ge=0.0, lt=1.0)]
Transformation = Literal["log", "log1p", "logit", "count", "softplus", "relu", "sqrt"]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


Model = TypeVar("Model", bound=BaseModel)


class ArtefactError(ValueError):
    """An artefact that does not describe a model this forecaster can build and serve."""


class _Strict(BaseModel):
    """JSON types as they are (no "16" for 16, no 16.0 for 16), unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Open(BaseModel):
    """Strict types for the keys named; other keys are allowed (library or tool extras)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


# --- model_config.json ---------------------------------------------------------------------------

_DEFAULTS = TFTConfig()


def _default(name: str) -> Any:
    value = getattr(_DEFAULTS, name)
    return list(value) if isinstance(value, tuple) else value


class ConfigSection(_Strict):
    """`config`: a `forecaster.model.config.TFTConfig`; absent keys take its defaults."""

    targets: Annotated[Names, Field(min_length=1)] = _default("targets")
    covariates: Names = _default("covariates")
    quantiles: Annotated[list[Probability], Field(min_length=1, max_length=99)] = _default(
        "quantiles"
    )
    encoder_length: Steps = _default("encoder_length")
    min_encoder_length: Steps = _default("min_encoder_length")
    horizon: Annotated[int, Field(ge=1, le=MAX_HORIZON)] = _default("horizon")
    hidden_size: Width = _default("hidden_size")
    attention_heads: Annotated[int, Field(ge=1, le=MAX_HEADS)] = _default("attention_heads")
    hidden_continuous_size: Width = _default("hidden_continuous_size")
    dropout: Share = _default("dropout")
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = _default("learning_rate")
    transformations: dict[Name, Transformation] = _default("transformations")
    log_covariates: Names = _default("log_covariates")
    mask_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = _default("mask_fraction")
    normalisation: Literal["mean", "last"] = _default("normalisation")
    calendar: Annotated[list[str], Field(max_length=len(CALENDAR))] = _default("calendar")

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("must be increasing")
        if 0.5 not in value:
            raise ValueError("must include 0.5")
        return value

    @field_validator("calendar")
    @classmethod
    def _calendar(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(CALENDAR))
        if unknown:
            raise ValueError(f"unknown calendar features {unknown}; known: {list(CALENDAR)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ConfigSection:
        if self.min_encoder_length > self.encoder_length:
            raise ValueError(
                f"min_encoder_length {self.min_encoder_length} exceeds encoder_length "
                f"{self.encoder_length}"
            )
        names = [*self.targets, *self.covariates]
        if len(set(names)) != len(names):
            raise ValueError("targets and covariates must be distinct names")
        for key, allowed, what in (
            ("transformations", self.targets, "targets"),
            ("log_covariates", self.covariates, "covariates"),
        ):
            stray = sorted(set(getattr(self, key)) - set(allowed))
            if stray:
                raise ValueError(f"{key} for quantities that are not {what}: {', '.join(stray)}")
        if self.attention_heads > self.hidden_size:
            raise ValueError("attention_heads exceeds hidden_size")
        return self

    def reals(self) -> set[str]:
        """The continuous inputs the fast path builds for this configuration."""
        scales = [f"{t}_{part}" for t in self.targets for part in ("center", "scale")]
        quantities = [*self.targets, *self.covariates]
        return {"encoder_length", "relative_time_idx", *self.calendar, *quantities, *scales}


class HParams(_Open):
    """`hparams`: the keyword arguments of `TemporalFusionTransformer`, those that shape it."""

    hidden_size: Width
    lstm_layers: Annotated[int, Field(ge=1, le=MAX_LSTM_LAYERS)]
    dropout: Share
    output_size: (
        Annotated[int, Field(ge=1, le=99)]
        | Annotated[
            list[Annotated[int, Field(ge=1, le=99)]], Field(min_length=1, max_length=MAX_QUANTITIES)
        ]
    )
    attention_head_size: Annotated[int, Field(ge=1, le=MAX_HEADS)]
    max_encoder_length: Steps
    hidden_continuous_size: Width
    hidden_continuous_sizes: dict[Name, Width] = {}
    static_categoricals: Names
    static_reals: Names
    time_varying_categoricals_encoder: Names = []
    time_varying_categoricals_decoder: Names = []
    time_varying_reals_encoder: Names
    time_varying_reals_decoder: Names
    x_reals: Names
    x_categoricals: Names
    embedding_sizes: dict[
        Name,
        Annotated[
            list[Annotated[int, Field(ge=1, le=MAX_CLASSES)]], Field(min_length=2, max_length=2)
        ],
    ]
    embedding_labels: dict[Name, dict[str, Annotated[int, Field(ge=0, lt=MAX_CLASSES)]]] = {}
    embedding_paddings: Names = []
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    mask_bias: Finite = -1e9
    causal_attention: bool = True
    share_single_variable_networks: bool = False

    @field_validator("embedding_sizes")
    @classmethod
    def _dimensions(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, (_, dimension) in value.items():
            if dimension > MAX_WIDTH:
                raise ValueError(f"{name}: embedding dimension {dimension} exceeds {MAX_WIDTH}")
        return value


class LossSection(_Strict):
    """`loss`: the quantiles and per-target weights the training loss was built with."""

    quantiles: Annotated[list[Probability], Field(min_length=1, max_length=99)]
    weights: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]]


class ArrayBlob(_Strict):
    """An array as `forecaster.model.serialize` stores it."""

    kind: Literal["ndarray", "tensor"] = Field(alias="__type__")
    dtype: Annotated[str, Field(max_length=16)]
    shape: Annotated[list[Annotated[int, Field(ge=0, le=MAX_CLASSES)]], Field(max_length=4)]
    data: list[Any]

    @model_validator(mode="after")
    def _size(self) -> ArrayBlob:
        if len(self.data) != math.prod(self.shape):
            raise ValueError(f"{len(self.data)} values for shape {self.shape}")
        return self

    def numbers(self) -> list[float] | None:
        """The values, if all are finite numbers."""
        finite = all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in self.data
        )
        return [float(x) for x in self.data] if finite else None


class ScalerParams(_Strict):
    copy_: bool = Field(alias="copy")  # `copy` would shadow BaseModel.copy
    with_mean: bool
    with_std: bool


class ScalerState(_Open):
    mean_: ArrayBlob
    scale_: ArrayBlob


class ScalerBlob(_Strict):
    """A fitted `sklearn.preprocessing.StandardScaler` of one input."""

    kind: Literal["StandardScaler"] = Field(alias="__type__")
    params: ScalerParams
    state: ScalerState

    @model_validator(mode="after")
    def _usable(self) -> ScalerBlob:
        mean, scale = self.state.mean_.numbers(), self.state.scale_.numbers()
        if mean is None or len(mean) != 1:
            raise ValueError("mean_ must be one finite number")
        if scale is None or len(scale) != 1 or not scale[0] > 0:
            raise ValueError("scale_ must be one finite number above 0")
        return self


class LabelEncoderParams(_Strict):
    add_nan: bool
    warn: bool


class LabelEncoderState(_Open):
    classes_: Annotated[
        dict[str, Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_CLASSES)
    ]

    @field_validator("classes_")
    @classmethod
    def _numbered(cls, value: dict[str, int]) -> dict[str, int]:
        if sorted(value.values()) != list(range(len(value))):
            raise ValueError("classes_ must number the classes 0..n-1, each once")
        return value


class LabelEncoderBlob(_Strict):
    """A fitted `NaNLabelEncoder` of one categorical input."""

    kind: Literal["NaNLabelEncoder"] = Field(alias="__type__")
    params: LabelEncoderParams
    state: LabelEncoderState


class NormalizerParams(_Strict):
    center: bool
    max_length: Annotated[int, Field(ge=1)] | None
    method: Literal["standard"]  # the per-window standardisation the fast path computes
    method_kwargs: dict[str, Any]
    transformation: Transformation | None


class NormalizerBlob(_Strict):
    """A per-window target normaliser."""

    kind: Literal["EncoderNormalizer", "LastValueNormalizer"] = Field(alias="__type__")
    params: NormalizerParams
    state: dict[str, Any] = {}


class MultiNormalizerParams(_Strict):
    normalizers: Annotated[list[NormalizerBlob], Field(max_length=MAX_QUANTITIES)]


class MultiNormalizerBlob(_Strict):
    """One normaliser per target."""

    kind: Literal["MultiNormalizer"] = Field(alias="__type__")
    params: MultiNormalizerParams
    state: dict[str, Any] = {}


class ModelConfigFile(_Strict):
    """`model_config.json`."""

    config: ConfigSection
    hparams: HParams
    loss: LossSection
    output_transformer: MultiNormalizerBlob
    libraries: dict[str, str] = {}


# --- dataset_parameters.json ----------------------------------------------------------------------


class DatasetParameters(_Open):
    """`dataset_parameters.json`: what turns raw values into the network's inputs."""

    max_encoder_length: Steps
    min_encoder_length: Steps
    max_prediction_length: Annotated[int, Field(ge=1, le=MAX_HORIZON)]
    min_prediction_length: Annotated[int, Field(ge=1, le=MAX_HORIZON)]
    target: Annotated[Names, Field(min_length=1)]
    static_categoricals: Names
    time_varying_known_reals: Names
    time_varying_unknown_reals: Names
    categorical_encoders: dict[str, LabelEncoderBlob]
    scalers: dict[str, ScalerBlob | None]
    target_normalizer: MultiNormalizerBlob
    add_relative_time_idx: Literal[True]
    add_target_scales: Literal[True]
    add_encoder_length: Literal[True]


# --- the other files -----------------------------------------------------------------------------

Factor = Annotated[float, Field(ge=0.0, le=MAX_CALIBRATION_FACTOR, allow_inf_nan=False)]


class CalibrationFile(_Strict):
    """`calibration.json` (`forecaster.model.calibration`)."""

    version: Literal[1]
    targets: Annotated[Names, Field(min_length=1)]
    lower: list[Annotated[list[Factor], Field(max_length=MAX_HORIZON)]]
    upper: list[Annotated[list[Factor], Field(max_length=MAX_HORIZON)]]
    info: dict[str, Any] = {}

    @model_validator(mode="after")
    def _shapes(self) -> CalibrationFile:
        for side in (self.lower, self.upper):
            if len(side) != len(self.targets) or len({len(row) for row in side}) > 1:
                raise ValueError("lower and upper need one row per target, all of one length")
        if len(self.lower[0]) != len(self.upper[0]):
            raise ValueError("lower and upper rows differ in length")
        return self


class Server(_Strict):
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    profile: Annotated[str, Field(max_length=128)]


class ServerMapping(_Strict):
    """`server_mapping.json`: the hosts the model was trained on and their encoded ids."""

    version: str
    encoding: str
    servers: dict[str, Server]

    @model_validator(mode="after")
    def _ids(self) -> ServerMapping:
        for name, server in self.servers.items():
            if server.id != host_id(name):
                raise ValueError(f"the id of {name} is not its sha256 (first 16 hex digits)")
        return self


class Backtest(_Open):
    """`backtest.json`: how the version forecast held-out data (read by people, not served)."""

    version: str | None = None
    quantiles: list[Probability] | None = None
    summary: dict[str, Any] | None = None


class TrainingInfo(_Open):
    """`training_info.json`, the manifest (the registry checks the hashes it lists)."""

    version: str
    contract_version: str
    files: dict[Annotated[str, Field(max_length=128)], Sha256]


OTHER_SCHEMAS: dict[str, type[BaseModel]] = {
    SERVER_MAPPING: ServerMapping,
    BACKTEST: Backtest,
    MANIFEST: TrainingInfo,
}


# --- checks --------------------------------------------------------------------------------------


def check_version(directory: Path, listed: Collection[str]) -> None:
    """Check every artefact of a registry version whose manifest lists `listed` (file names).

    The files the loader reads must be listed (so that their hashes were verified), and
    every listed file and the manifest itself must pass its schema.
    """
    for name in REQUIRED:
        if name not in listed:
            raise ArtefactError(f"{name}: not in the manifest")
    if (directory / CALIBRATION).is_file() and CALIBRATION not in listed:
        raise ArtefactError(f"{CALIBRATION}: present but not in the manifest, so never verified")
    check_bundle(directory)
    for name in sorted({*listed, MANIFEST} - {*REQUIRED, CALIBRATION}):
        path = directory / name
        if name.endswith(".safetensors"):
            _weights_header(path)
        elif path.is_file() or name in listed:
            data = _read_json(path)
            if name in OTHER_SCHEMAS:
                _validate(OTHER_SCHEMAS[name], data, name)


def check_bundle(directory: Path) -> None:
    """Check the files `forecaster.model.tft.load_bundle` reads from `directory`."""
    model = _validate(ModelConfigFile, _read_json(directory / MODEL_CONFIG), MODEL_CONFIG)
    _check_model_config(model)
    dataset = _validate(
        DatasetParameters, _read_json(directory / DATASET_PARAMETERS), DATASET_PARAMETERS
    )
    _check_dataset(dataset, model)
    _check_weights(_weights_header(directory / WEIGHTS), model.hparams)
    if (directory / CALIBRATION).is_file():
        calibration = _validate(CalibrationFile, _read_json(directory / CALIBRATION), CALIBRATION)
        _check_calibration(calibration, model.config)


def _read_json(path: Path) -> Any:
    name = path.name
    try:
        size = path.stat().st_size
        raw = path.read_bytes() if size <= MAX_JSON_BYTES else None
    except OSError as exc:
        raise ArtefactError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if raw is None:
        raise ArtefactError(f"{name}: {size} bytes, more than {MAX_JSON_BYTES}")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ArtefactError(f"{name}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ArtefactError(f"{name}: not valid JSON ({str(exc)[:120]})") from None


def _validate(model: type[Model], data: Any, name: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")[:200]
        problem = f"{name}: {where}: {message}" if where else f"{name}: {message}"
        raise ArtefactError(problem) from None
    except RecursionError:
        raise ArtefactError(f"{name}: nested too deeply") from None


def _same(name: str, where: str, found: object, expected: object, source: str) -> None:
    if found != expected:
        raise ArtefactError(f"{name}: {where} is {_short(found)}, {source} says {_short(expected)}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_model_config(model: ModelConfigFile) -> None:
    """The network's hyper-parameters against the configuration they were built from."""
    config, hparams, name = model.config, model.hparams, MODEL_CONFIG
    outputs = hparams.output_size
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for where, found, expected in (
        ("hparams.hidden_size", hparams.hidden_size, config.hidden_size),
        ("hparams.attention_head_size", hparams.attention_head_size, config.attention_heads),
        ("hparams.hidden_continuous_size", hparams.hidden_continuous_size,
         config.hidden_continuous_size),
        ("hparams.max_encoder_length", hparams.max_encoder_length, config.encoder_length),
        ("hparams.output_size", outputs, [len(config.quantiles)] * len(config.targets)),
        ("loss.quantiles", model.loss.quantiles, config.quantiles),
        ("loss.weights count", len(model.loss.weights), len(config.targets)),
        ("hparams.x_reals", sorted(hparams.x_reals), sorted(config.reals())),
    ):  # fmt: skip
        _same(name, where, found, expected, "config")
    categoricals = sorted(hparams.x_categoricals)
    if not set(categoricals) <= set(STATIC_CATEGORICALS):
        raise ArtefactError(f"{name}: hparams.x_categoricals {categoricals}: only profile, host")
    _same(name, "hparams.static_categoricals", sorted(hparams.static_categoricals), categoricals,
          "x_categoricals")  # fmt: skip
    _same(name, "hparams.embedding_sizes", sorted(hparams.embedding_sizes), categoricals,
          "x_categoricals")  # fmt: skip
    for label, classes in hparams.embedding_labels.items():
        size = hparams.embedding_sizes.get(label, [len(classes)])[0]
        if size != len(classes):
            raise ArtefactError(
                f"{name}: hparams.embedding_sizes.{label} has {size} classes, "
                f"embedding_labels.{label} {len(classes)}"
            )
    _check_normalizers(model.output_transformer, config, name, "output_transformer")


def _check_normalizers(
    blob: MultiNormalizerBlob, config: ConfigSection, name: str, where: str
) -> None:
    normalizers = blob.params.normalizers
    if len(normalizers) != len(config.targets):
        raise ArtefactError(
            f"{name}: {where} has {len(normalizers)} normalizers for {len(config.targets)} targets"
        )
    kind = NORMALIZERS[config.normalisation]
    for i, (target, normalizer) in enumerate(zip(config.targets, normalizers, strict=True)):
        at = f"{where}.params.normalizers.{i}"
        _same(name, f"{at} type", normalizer.kind, kind, f"normalisation {config.normalisation}")
        expected = config.transformations.get(target)
        _same(name, f"{at}: transformation", normalizer.params.transformation, expected,
              f"model_config for {target}")  # fmt: skip


def _check_dataset(dataset: DatasetParameters, model: ModelConfigFile) -> None:
    """The dataset parameters against the configuration and the network's inputs."""
    config, hparams, name = model.config, model.hparams, DATASET_PARAMETERS
    for where, found, expected in (
        ("max_encoder_length", dataset.max_encoder_length, config.encoder_length),
        ("min_encoder_length", dataset.min_encoder_length, config.min_encoder_length),
        ("max_prediction_length", dataset.max_prediction_length, config.horizon),
        ("min_prediction_length", dataset.min_prediction_length, config.horizon),
        ("target", dataset.target, config.targets),
        ("time_varying_known_reals", dataset.time_varying_known_reals, config.calendar),
        ("time_varying_unknown_reals", dataset.time_varying_unknown_reals,
         [*config.targets, *config.covariates]),
        ("static_categoricals", sorted(dataset.static_categoricals),
         sorted(hparams.x_categoricals)),
    ):  # fmt: skip
        _same(name, where, found, expected, "model_config")
    for label in hparams.x_categoricals:
        encoder = dataset.categorical_encoders.get(label)
        if encoder is None:
            raise ArtefactError(f"{name}: categorical_encoders: none for {label}")
        classes = len(encoder.state.classes_)
        size = hparams.embedding_sizes[label][0]
        if classes != size:
            raise ArtefactError(
                f"{name}: categorical_encoders.{label} has {classes} classes, "
                f"model_config's embedding_sizes.{label} {size}"
            )
    for real in sorted(set(hparams.x_reals) - set(config.targets)):
        if real not in dataset.scalers:
            raise ArtefactError(f"{name}: scalers: no scaler for {real}")
    _check_normalizers(dataset.target_normalizer, config, name, "target_normalizer")


def _check_calibration(calibration: CalibrationFile, config: ConfigSection) -> None:
    stray = [t for t in calibration.targets if t not in config.targets]
    if stray:
        raise ArtefactError(f"{CALIBRATION}: calibrates {stray[0]}, not a target of the model")
    for side in ("lower", "upper"):
        for i, row in enumerate(getattr(calibration, side)):
            if len(row) < config.horizon:
                raise ArtefactError(
                    f"{CALIBRATION}: {side}.{i} has {len(row)} horizon steps, the model "
                    f"forecasts {config.horizon}"
                )


class TensorEntry(_Strict):
    dtype: Literal["F64", "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL"]
    shape: Annotated[list[Annotated[int, Field(ge=0, le=2**31)]], Field(max_length=8)]
    data_offsets: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]


class WeightsHeader(_Strict):
    """The JSON header of a safetensors file: tensor entries and `__metadata__` aliases."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = {}

    def shape(self, name: str) -> list[int] | None:
        """A tensor's shape by its name or an alias of it (shared tensors are stored once)."""
        entry = self.tensors.get(name) or self.tensors.get(self.metadata.get(name, ""))
        return None if entry is None else entry.shape


def _weights_header(path: Path) -> WeightsHeader:
    """Parse and check a safetensors header: offsets tile the file, sizes match shapes."""
    name = path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            fits = size >= 8 and 2 <= length <= min(MAX_HEADER_BYTES, size - 8)
            text = handle.read(length) if fits else b""
    except OSError as exc:
        raise ArtefactError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if not fits:
        raise ArtefactError(f"{name}: header of {length} bytes in a {size}-byte file")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raw = None
    if not isinstance(raw, dict):
        raise ArtefactError(f"{name}: header is not a JSON object")
    metadata = raw.pop("__metadata__", {})
    header = _validate(WeightsHeader, {"tensors": raw, "metadata": metadata}, name)
    spans = sorted(
        (*entry.data_offsets, key, DTYPE_BYTES[entry.dtype] * math.prod(entry.shape))
        for key, entry in header.tensors.items()
    )
    position = 0
    for begin, end, key, nbytes in spans:
        if begin != position or end - begin != nbytes:
            raise ArtefactError(f"{name}: tensors.{key}: data_offsets do not tile the data")
        position = end
    if position != size - 8 - length:
        raise ArtefactError(
            f"{name}: the tensors need {position} bytes, the file holds {size - 8 - length}"
        )
    return header


def _check_weights(header: WeightsHeader, hparams: HParams) -> None:
    """The shapes that the hyper-parameters fix, against those stored."""
    hidden, heads, layers = hparams.hidden_size, hparams.attention_head_size, hparams.lstm_layers
    expected: dict[str, list[int]] = {  # the library caps embedding widths at hidden_size
        f"input_embeddings.embeddings.{label}.weight": [classes, min(width, hidden)]
        for label, (classes, width) in hparams.embedding_sizes.items()
    }
    for lstm in ("lstm_encoder", "lstm_decoder"):
        for k in range(layers):
            expected[f"{lstm}.weight_ih_l{k}"] = [4 * hidden, hidden]
            expected[f"{lstm}.weight_hh_l{k}"] = [4 * hidden, hidden]
    outputs = hparams.output_size
    if isinstance(outputs, list):
        expected |= {f"output_layer.{i}.weight": [n, hidden] for i, n in enumerate(outputs)}
    else:
        expected["output_layer.weight"] = [outputs, hidden]
    expected["multihead_attn.v_layer.weight"] = [hidden // heads, hidden]
    for key, shape in expected.items():
        found = header.shape(key)
        if found != shape:
            stored = "is missing" if found is None else f"has shape {found}"
            raise ArtefactError(f"{WEIGHTS}: {key} {stored}, model_config implies {shape}")
    extra = [f"lstm_encoder.weight_ih_l{layers}", f"output_layer.{len(_listed(outputs))}.weight"]
    for key in extra:
        if header.shape(key) is not None:
            raise ArtefactError(f"{WEIGHTS}: {key} is more than model_config implies")
    _check_prescalers(header, hparams)


def _listed(outputs: int | Sequence[int]) -> Sequence[int]:
    return outputs if isinstance(outputs, Sequence) else [outputs]


def _check_prescalers(header: WeightsHeader, hparams: HParams) -> None:
    """Every continuous input has its prescaler, as wide as hidden_continuous_size(s)."""
    names = [*header.tensors, *header.metadata]
    for real in hparams.x_reals:
        width = hparams.hidden_continuous_sizes.get(real, hparams.hidden_continuous_size)
        suffix = f"prescalers.{real}.weight"
        shapes = [header.shape(key) for key in names if key == suffix or key.endswith(f".{suffix}")]
        if not shapes:
            raise ArtefactError(f"{WEIGHTS}: no {suffix} for the input {real}")
        wrong = [shape for shape in shapes if shape != [width, 1]]
        if wrong:
            raise ArtefactError(
                f"{WEIGHTS}: {suffix} has shape {wrong[0]}, model_config implies {[width, 1]}"
            )
