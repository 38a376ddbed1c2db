"""Scheduled retraining behind a backtest gate: `python -m training.retrain`.

`service` (the command line, the scheduler and the listener), `app` (its HTTP routes),
`config` (its settings), `retrainer` (one run and its bookkeeping), `steps` (the run's steps),
`metrics` (its own /metrics).
"""
