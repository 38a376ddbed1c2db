"""The engine's horizon: the caller's (the contract's grid), and a model's that differs from it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from forecaster.contract import load_contract
from forecaster.engine import forecast
from forecaster.grid import CONTEXT_STEPS, GRID, HORIZON_STEPS, SEASON_STEPS, STEP_SECONDS

CPU = load_contract()["cpu_utilisation"]
END = 1_795_000_000 - 1_795_000_000 % STEP_SECONDS


@dataclass(frozen=True)
class Shape:
    """The parts of `TFTConfig` the engine reads."""

    horizon: int
    targets: tuple[str, ...] = (CPU.name,)
    covariates: tuple[str, ...] = ()
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    encoder_length: int = CONTEXT_STEPS
    min_encoder_length: int = 1


class FakePredictor:
    """A model whose p50 rises by 0.001 per step ahead, over its own horizon."""

    def __init__(self, horizon: int) -> None:
        self.config = Shape(horizon)
        self.encoder_variables = [CPU.name]

    def predict_with_importance(self, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        n = len(batch["lengths"])
        p50 = 0.5 + 0.001 * np.arange(1, self.config.horizon + 1)
        band = np.stack([p50 - 0.05, p50, p50 + 0.05], axis=-1)
        return np.broadcast_to(band[None, :, None, :], (n, p50.size, 1, 3)).copy(), np.ones((n, 1))


def _cleaned():
    from forecaster.clean import Cleaned

    steps = GRID.context_steps
    seconds = END - STEP_SECONDS * np.arange(steps - 1, -1, -1)
    values = (0.4 + 0.1 * np.sin(2 * np.pi * seconds / 86_400.0))[None, :, None].repeat(2, 0)
    return Cleaned(
        instances=("ppdb001", "ppweb001"),
        quantities=(CPU.name,),
        end=pd.Timestamp(END, unit="s", tz="UTC"),
        values=values,
        observed=np.ones(values.shape, dtype=bool),
        lengths=np.full(2, steps, dtype=np.int64),
        skipped={},
        counts=Counter(),
    )


def _forecast(model_horizon: int):
    return forecast(
        _cleaned(),
        [CPU],
        {},
        FakePredictor(model_horizon),
        min_steps=36,
        horizon=HORIZON_STEPS,
        step=STEP_SECONDS,
        season=SEASON_STEPS,
        batch_factory=lambda **fields: fields,
    )


@pytest.mark.parametrize("model_horizon", [HORIZON_STEPS, HORIZON_STEPS + 24])
def test_a_model_reaching_the_horizon_serves_its_first_horizon_steps(model_horizon):
    result = _forecast(model_horizon)
    served = result.forecasts[CPU.name]
    assert served.shape == (2, HORIZON_STEPS, 3)
    assert result.methods[CPU.name].tolist() == ["tft", "tft"]
    expected = 0.5 + 0.001 * np.arange(1, HORIZON_STEPS + 1)
    np.testing.assert_allclose(served[:, :, 1], np.broadcast_to(expected, (2, HORIZON_STEPS)))


def test_a_model_short_of_the_horizon_is_refused_and_the_heuristic_serves(caplog):
    with caplog.at_level("WARNING", logger="forecaster.engine"):
        result = _forecast(HORIZON_STEPS - 1)
    assert result.forecasts[CPU.name].shape == (2, HORIZON_STEPS, 3)
    assert result.methods[CPU.name].tolist() == ["heuristic", "heuristic"]
    assert np.isfinite(result.forecasts[CPU.name]).all()
    assert any("fewer than the horizon" in r.getMessage() for r in caplog.records)


def test_the_horizon_and_step_are_the_callers():
    with pytest.raises(TypeError, match="horizon"):
        forecast(_cleaned(), [CPU], {}, None, min_steps=36, step=STEP_SECONDS)  # type: ignore[call-arg]
    short = forecast(_cleaned(), [CPU], {}, None, min_steps=36, horizon=12, step=STEP_SECONDS)
    assert short.forecasts[CPU.name].shape == (2, 12, 3)
