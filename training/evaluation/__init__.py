"""Evaluations of the served forecasts and alerts: `python -m training.evaluation`.

`early_warning` (the driver: alerts on labelled incidents vs baselines), `methods` (the alerting
methods and their tuning), `alerts` (the alert rule replay and scoring), `report` and `plots`
(its report); `guard` (`python -m training.evaluation.guard`: the service's path with and without
the guard), `ramp_study` and `ramp_fan` (the ramp outlook studies).
"""
