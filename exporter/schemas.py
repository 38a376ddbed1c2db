"""OpenAPI schemas of the REST bodies (documentation only: responses are built by `views`).

Units: `cpu_utilisation`, `memory_utilisation`, `filesystem_utilisation` are ratios 0-1,
`disk_io` is bytes per second, `request_latency_p95` is seconds. Times are unix seconds (UTC).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

QUANTITY_DOC = (
    "Quantity keys are the data contract's: cpu_utilisation, memory_utilisation, "
    "filesystem_utilisation (ratio 0-1), disk_io (bytes per second), request_latency_p95 "
    "(seconds). Times are unix seconds (UTC); `trend` is in units per hour; non-finite "
    "values are null."
)


class ErrorBody(BaseModel):
    """Every error: a short code and a human reason, never a traceback."""

    error: str = Field(examples=["not_found"])
    reason: str = Field(examples=["no forecast for server 'ppdb999'"])


class ForecastBody(BaseModel):
    """One quantity's forecast over the whole horizon: step k at origin + (k + 1) * step_seconds."""

    p10: list[float | None]
    p50: list[float | None]
    p90: list[float | None]
    current: float | None = Field(description="Last observed value, in the quantity's unit.")
    trend: float | None = Field(description="Slope of the last hour, in units per hour.")
    unit: str = Field(examples=["ratio"], description="ratio, bytes_per_second or seconds.")
    method: str = Field(examples=["tft"], description="tft or heuristic (warm-up).")


class AlertBody(BaseModel):
    """One server at risk (risk_score > 0)."""

    server_name: str
    profile: str
    priority: str = Field(examples=["P1"], description="P1 >= 70, P2 >= 40, else P3.")
    risk_score: float | None = Field(description="0-100.")
    cpu_risk: float | None
    mem_risk: float | None
    latency_risk: float | None
    message: str


class AlertsBody(BaseModel):
    """`/alerts/active`: highest risk first."""

    alerts: list[AlertBody]
    count: int


class EnvironmentBody(BaseModel):
    """Fleet outlook."""

    prob_30m: float | None = Field(description="Fleet incident probability 0-1 within 30 min.")
    prob_8h: float | None = Field(description="Fleet incident probability 0-1 within 8 h.")
    high_risk_servers: int
    total_servers: int
    fleet_health: str = Field(examples=["healthy"], description="healthy, warning or critical.")


class MetadataBody(BaseModel):
    """What the forecasts are."""

    generated_at: float | None
    model_version: str | None
    contract_version: str
    step_seconds: int
    horizon_steps: int
    quantiles: list[float]


class CurrentBody(BaseModel):
    """`/predictions/current`: instance -> quantity -> forecast."""

    predictions: dict[str, dict[str, ForecastBody]]
    alerts: list[AlertBody]
    environment: EnvironmentBody
    metadata: MetadataBody


class RiskBody(BaseModel):
    """The seed's risk score and its parts."""

    priority: str
    risk_score: float | None
    cpu_risk: float | None
    mem_risk: float | None
    latency_risk: float | None
    message: str


class BreachBody(BaseModel):
    """Breach outlook against the critical threshold (in the quantity's unit)."""

    threshold: float | None
    prob_30m: float | None
    prob_8h: float | None
    time_to_breach_seconds: float | None = Field(
        description="Seconds from the origin until p50 passes the threshold; null if never."
    )
    earliest_breach_seconds: float | None = Field(
        None, description="Seconds from the origin until p90 passes the threshold; null if never."
    )


class DriverBody(BaseModel):
    """An input variable and its importance weight."""

    variable: str
    weight: float | None


class ServerBody(BaseModel):
    """`/predict/{server}`."""

    server_name: str
    profile: str
    method: str
    origin: float | None = Field(description="Unix time of the last observed step.")
    made_at: float | None = Field(description="Unix time the forecast was computed.")
    predictions: dict[str, ForecastBody]
    risk: RiskBody
    breaches: dict[str, BreachBody]
    drivers: list[DriverBody]


class StatusBody(BaseModel):
    """`/status`: warm-up, model, last cycle, source and shard."""

    running: bool
    ready: bool
    warmup: dict[str, object]
    model: dict[str, object]
    last_cycle: dict[str, float | None]
    cycles_total: int
    source_up: bool
    input_partial: bool
    shard: dict[str, int]
    cycle_failures: dict[str, int] = Field(description="failed cycles by reason")
    dropped_series: dict[str, int] = Field(
        description="instances dropped by reason (max_series: over the configured capacity)"
    )
    persist: dict[str, int] = Field(
        description="errors: failed writes of the snapshot to the state directory"
    )
    config: dict[str, bool | float | None] = Field(
        description="reload_successful, reloaded_at: the last configuration reload"
    )
    generated_at: float | None


class HealthBody(BaseModel):
    """`/health` (seed shape)."""

    status: str = Field(examples=["healthy"])
    ready: bool
    model_loaded: bool
    source_up: bool
    servers: int


class FeedResult(BaseModel):
    """`POST /feed/data`: records kept and records refused (index into the batch, reason)."""

    accepted: int
    rejected: list[dict[str, object]]


class ReloadResult(BaseModel):
    """`POST /-/reload`."""

    status: str = Field(examples=["reload requested"])
