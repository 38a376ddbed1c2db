"""Target normalisation centred on the last observed value of each window.

pytorch-forecasting's EncoderNormalizer centres a window on its mean: a network that outputs
zero then forecasts the window's average, and departures such as an incident's precursor are
pulled back to normal. Centring on the last value instead makes persistence the default,
so the network only has to learn how the future differs from now.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pytorch_forecasting.data import EncoderNormalizer


class LastValueNormalizer(EncoderNormalizer):
    """EncoderNormalizer with centre = last value of the window, scale = its std."""

    def _set_parameters(
        self,
        y_center: pd.Series | np.ndarray | torch.Tensor,
        y_scale: pd.Series | np.ndarray | torch.Tensor,
    ) -> None:
        super()._set_parameters(y_center, y_scale)  # standard scale (and a mean centre)
        if isinstance(y_center, torch.Tensor | np.ndarray):
            self.center_ = y_center[..., -1]
        else:
            self.center_ = np.asarray(y_center)[-1]
