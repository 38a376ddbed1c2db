"""training package.

At the top, what training and its users share: `train`, `calibrate`, `backtest` (and its
`backtest_report`), the scoring `metrics`, the `baselines`, the promotion `gates`, the training
`dataset`, the history source (`history`), the service `replay` and the `real_data` converter.
Two subsystems stand on them: `training.retrain` (the retraining service) and
`training.evaluation` (early warning, the guard and the ramp outlook studies). Neither imports
the other, and nothing at the top imports either.
"""
