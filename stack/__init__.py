"""Runs the local monitoring stack as processes: Prometheus, Alertmanager, node_exporter, simulator.

The simulator's history is backfilled into Prometheus with promtool, then every service starts on
127.0.0.1 with a free port; the demo adds the forecaster (shipped model) and a local webhook
receiver for Alertmanager's notifications. This package drives the other project packages only
as subprocesses and never imports them.
"""

from stack.config import StackConfig
from stack.process import StackError
from stack.stack import Stack, StackInfo

__all__ = ["Stack", "StackConfig", "StackError", "StackInfo"]
