"""The demo's memory leak, in compressed time: does the warning come before the breach?

A `memory_leak` injected on ppdb001 with a 2 h ramp, as `POST /incident/inject {"ramp": "2h"}`
does in the demo (the simulator's own `Engine.inject` makes the record), is evaluated by the
`simulator.signals` on the 5-minute grid over the three days before it and its ramp. The real
`Service` with the shipped model then runs one cycle per 5-minute step on a source that
answers its `query_range` calls from that history (`training.replay.HistorySource`), from
half an hour before the injection (time enough to backfill the three days it holds) to the
breach. At each cycle the exported 8 h breach probability is compared with the exported
warning probability, and `for:` is applied as Prometheus applies it to a value that changes
once per step (`training.evaluation.alerts.hold_for`), with the `for:` of the
NodeForecastMemoryExhaustion warning in `prometheus/rules/alerts.yml`. The rule's PromQL
itself is exercised against real Prometheus by `promtool test rules`
(tests/unit/test_alert_rules.py); this test is about the forecast's timing.

Measured (this machine, shipped defaults): the warning fires 20 min before the breach. The
memory ramp outlook fits the last 6 h: chosen on the simulator's leaks (2.5 to 8 h long,
median lead 2 h there, docs/RAMP-study.md), it needs more than half of a 2 h ramp before its
line reaches the threshold with probability 0.9 (fits over 2 to 4 h, which would see the
demo's ramp sooner, raise several times more false alerts on the tuning fleet). The issue's
goal is at least 1 h; `WARNING_LEAD_S` pins what the product does today so that a regression
fails, not the goal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forecaster.config import load_config
from forecaster.service import Service
from forecaster.serving import ModelHolder
from simulator import schedule as sch
from simulator import signals as sim
from simulator.engine import Engine
from simulator.fleet import build_fleet
from simulator.history import frame_of
from training.evaluation import alerts as ar
from training.replay import Chain, HistorySource

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = Path(__file__).resolve().parents[2]
NODE = "ppdb001"
RAMP_S = 2 * 3600
STEP = sch.STEP
WARNING_LEAD_S = 15 * 60  # measured 20 min (15.5 min at stop 22); the goal (issue 12) is 1 h
EPOCH = 1_800_000_000 // STEP * STEP


def _injected(fleet) -> tuple[dict, sch.Incidents]:
    """The record `Engine.inject` makes 30 min into EPOCH's day, and its incidents array."""
    at = [float(EPOCH + 1830)]  # mid-step, as a user's POST lands
    engine = Engine(fleet, epoch=EPOCH, incident_rate=0.0, clock=lambda: at[0])
    record = engine.inject(NODE, "memory_leak", RAMP_S)
    kinds = [k.name for k in sch.INCIDENT_KINDS]
    fields = np.full((5, fleet.size), np.nan)
    fields[0] = -1
    fields[:, fleet.index(NODE)] = (
        kinds.index("memory_leak"),
        record["precursor_start"],
        record["breach"],
        record["end"],
        record["end"] + sch.RECOVERY_STEPS * STEP,
    )
    kind, *times = (f[:, None] for f in fields)
    incidents = sch.Incidents(kind.astype(np.int64), *times)
    return record, incidents


def test_an_injected_two_hour_memory_leak_warns_before_the_breach() -> None:
    fleet = build_fleet(seed=7, nodes=[NODE, "ppweb001", "ppml001", "ppetl001"])
    record, incidents = _injected(fleet)
    breach = record["breach"]
    steps = np.arange(int(record["precursor_start"] - 3 * 86_400) // STEP, int(breach) // STEP + 1)
    values = sim.evaluate(fleet, steps, sim.Overrides(np.ones(fleet.size), incidents), 0.0)
    config = load_config(["--state.dir", "", "--model.device", "cpu"], {})
    holder = ModelHolder(config.model, config.contract().version)
    assert holder.check() is not None, "the shipped model must load"
    source = HistorySource(frame_of(fleet, steps, values), Chain.of(config, None).quantities)
    service = Service(config, source, holder, lambda snapshot, state: None, clock=source.now)

    origins = np.arange((record["precursor_start"] - 1800) // STEP * STEP, breach, STEP)
    probability, methods = [], []
    for origin in origins:
        source.at = float(origin) + 30.0
        assert service.run_cycle()
        outlook = service.snapshot.instances[NODE].breaches["memory_utilisation"]
        probability.append(outlook.probability["8h"])
        methods.append(service.snapshot.instances[NODE].forecasts["memory_utilisation"].method)
    rules, _ = ar.parse_forecast_rules(ROOT / "prometheus" / "rules" / "alerts.yml", config)
    (warning,) = [
        r for r in rules if r.quantity == "memory_utilisation" and r.severity == "warning"
    ]
    exported = service.snapshot.alert_thresholds[("memory_utilisation", "warning")]
    assert exported == warning.threshold  # what the rule compares with is what is exported
    above = np.asarray(probability)[None, :] > exported
    firing = ar.hold_for(above, ar.evaluations(warning.for_seconds, STEP))[0]
    seen = list(zip(origins.tolist(), probability, strict=True))
    assert firing.any(), f"no warning before the breach: {seen}"
    lead = breach - origins[np.argmax(firing)]
    print(f"[early warning] warning {lead / 60:.0f} min before the breach; methods {methods}")
    assert lead >= WARNING_LEAD_S
    assert not firing[origins < record["precursor_start"]].any()  # nothing before the leak
    assert "ramp" in methods  # the ramp outlook is what saw it
