"""Simulated fleet of servers exposing node_exporter-compatible metrics.

Every value under the default schedule is a pure function of (seed, node, timestamp): the live
`/metrics` endpoint and the exported history agree exactly. This package stands alone: it imports
no other project package and never imports torch.
"""

__version__ = "0.1.0"
