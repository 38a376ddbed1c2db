"""The fault catalogue: every scenario's injection and expected behaviour, in catalogue order.

Copied from the project's reliability bar (RELIABILITY.md, section 3, "Test catalogue"), which
lives outside this repository; the expected behaviour is each row's pass criterion. `NOTES`
says, per row, how the tests inject the fault where they differ from the catalogue's wording
(the project's documented variant), or what test a row still needs.
"""

from __future__ import annotations

from typing import NamedTuple


class Scenario(NamedTuple):
    """One row of the catalogue."""

    id: str
    injection: str
    expected: str


GROUPS: dict[str, tuple[str, str]] = {  # letter -> (title, what the second column holds)
    "A": ("Prometheus down / slow / 5xx / partial", "Injection"),
    "B": ("Malformed or hostile data", "Injection"),
    "C": ("Model artefacts", "Injection"),
    "D": ("Retraining and promotion", "Injection"),
    "E": ("Resources and time", "Injection"),
    "F": ("Load and soak", "Scenario"),
    "G": ("Lifecycle", "Injection"),
    "H": ("Security", "Check"),
    "I": ("Alert pipeline", "Check"),
}

CATALOGUE: tuple[Scenario, ...] = (
    Scenario(
        "A1",
        "Connection refused at start",
        (
            "Process runs; `/-/healthy` 200; `/metrics` 200 with `forecaster_source_up 0`; last "
            "snapshot from disk served; exit code unaffected"
        ),
    ),
    Scenario(
        "A2",
        "Goes down mid-run for 20 min",
        (
            "Last good forecasts unchanged; `forecaster_last_success_timestamp_seconds` frozen; "
            "one WARN on the transition (not one per retry); forecasts withdrawn after "
            "`stale_after`; self-metrics stay"
        ),
    ),
    Scenario(
        "A3",
        "Responds after 60 s",
        "Client timeout at 30 s, reason `timeout`; cycles never overlap; `/metrics` p99 unchanged",
    ),
    Scenario(
        "A4",
        "500/502/503, then recovers",
        "≤ 3 retries with backoff + jitter inside the cycle budget; recovery per target 6",
    ),
    Scenario(
        "A5",
        "429 with `Retry-After: 5`",
        "Waits ≥ 5 s; no request storm (count asserted)",
    ),
    Scenario(
        "A6",
        '400 "11,000 points" / 422 "too many samples"',
        (
            "Never retried; error with reason; planner property test shows our planner cannot "
            "produce them"
        ),
    ),
    Scenario(
        "A7",
        '200 + `warnings` / "results truncated due to limit" / Thanos partial',
        "Forecast published with `forecaster_input_partial 1`; retrain refuses the window",
    ),
    Scenario(
        "A8",
        (
            'HTML error page, truncated JSON, `status:"error"` inside a 200, wrong content type, '
            "200 MB body"
        ),
        "Parse error counted; body capped at 64 MB; no exception escapes the cycle",
    ),
    Scenario(
        "A9",
        "Prometheus restarting (`/-/ready` 503 during WAL replay)",
        "Backoff; fresh forecast ≤ 1 cycle + 30 s after ready",
    ),
    Scenario(
        "A10",
        "TLS: self-signed without CA / wrong hostname / expired",
        'Refused (`reason="tls"`); no silent fallback to insecure',
    ),
    Scenario(
        "B1",
        '`"NaN"`, `"+Inf"`, `"-Inf"` inside windows',
        (
            'Masked; > 20% missing in the context window → series skipped (`reason="missing"`); '
            "others unaffected"
        ),
    ),
    Scenario(
        "B2",
        "Negative values for non-negative metrics; ratios > 1",
        "Clipped to the per-metric domain before the model; `out_of_domain` counted",
    ),
    Scenario(
        "B3",
        "Gaps of 1, 5, 500 steps; series shorter than the encoder",
        (
            "Re-gridded; short gaps filled, long gap → skip with reason; never `AssertionError` "
            "(also run under `python -O`)"
        ),
    ),
    Scenario(
        "B4",
        "Duplicate, unsorted, out-of-order timestamps",
        "De-duplicated (keep last), sorted, identical result to the clean input",
    ),
    Scenario(
        "B5",
        "1e308, 1e19, subnormal values; constant and all-zero series",
        "No overflow/NaN in normalizer; constant in → finite flat forecast; p10 ≤ p50 ≤ p90",
    ),
    Scenario(
        "B6",
        'Label values with `"`, `\\`, `\\n`, unicode, RTL marks, 10 KB length',
        (
            "`/metrics` passes `promtool check metrics` and re-parses identically; JSON/WS valid;"
            " values > 256 B dropped with reason"
        ),
    ),
    Scenario(
        "B7",
        'Server name / config value `a"} or vector(1) or x{y="` and regex metacharacters',
        (
            "Rejected by the allow-list `^[A-Za-z0-9_.:-]{1,128}$`, or quoted; against real "
            "Prometheus the selector matches only the literal label (hypothesis property)"
        ),
    ),
    Scenario(
        "B8",
        "New server appears; server vanishes; 100k series returned",
        (
            "New server forecast within ≤ 2 cycles (fallback path); vanished → withdrawn after "
            "TTL; cap `max_series` with a drop counter; RSS in budget"
        ),
    ),
    Scenario(
        "B9",
        "Counter reset (simulator restart)",
        "`rate()` ingest shows no negative spike; forecasts continuous",
    ),
    Scenario(
        "B10",
        "DST change (Europe/Berlin) and `TZ` unset/odd",
        "Calendar features computed in UTC; no duplicated or missing hour features",
    ),
    Scenario(
        "C1",
        "Model directory empty/missing at start",
        (
            "No crash loop; `forecaster_model_loaded 0`; clear log with the path; baseline "
            "(seasonal naive) only if configured"
        ),
    ),
    Scenario(
        "C2",
        (
            "Truncated / zero-byte / random-byte `.safetensors`; header length > file; header > "
            "100 MB"
        ),
        'Load refused (`reason="corrupt"`), previous model keeps serving',
    ),
    Scenario(
        "C3",
        "sha256 in manifest ≠ file",
        'Refused (`reason="checksum"`)',
    ),
    Scenario(
        "C4",
        "Manifest `schema_version`, pf major or hparams (shapes/keys) differ",
        "Refused with message naming both versions; `load_model(strict=True)`",
    ),
    Scenario(
        "C5",
        "Malicious `model.ckpt` / `.pt` / `.pkl` whose `__reduce__` writes a canary file",
        (
            "Never opened: canary absent; loader accepts only `*.safetensors` + `*.json`; CI: "
            "ruff `S301`/`S403`, grep bans `torch.load(` without `weights_only=True`"
        ),
    ),
    Scenario(
        "C6",
        "Live servers/metrics missing from manifest encoders",
        "Unseen server → NaN class or fallback; unknown metric skipped with reason",
    ),
    Scenario(
        "C7",
        "Model emits NaN or crossing quantiles",
        "That series not published; quantiles sorted; counter incremented",
    ),
    Scenario(
        "D1",
        "`kill -9` during training / during writing",
        (
            "`current` pointer unchanged; `*.tmp-*` removed at next start (Prometheus "
            "`RemoveTmpDirs` pattern)"
        ),
    ),
    Scenario(
        "D2",
        "Write fails after N bytes (fault hook)",
        (
            "No file under a final name; old model serves; "
            '`forecaster_retrain_runs_total{outcome="failed"}`'
        ),
    ),
    Scenario(
        "D3",
        "Candidate MAE > 1.05 × champion, or p10–p90 coverage outside [0.70, 0.90] on holdout",
        'Rejected (`outcome="rejected"`); champion stays; report JSON written',
    ),
    Scenario(
        "D4",
        "Candidate NaN on validation",
        "Rejected",
    ),
    Scenario(
        "D5",
        "Promotion while 16 readers/scrapes run",
        (
            "`current.json.tmp` → fsync → `os.replace` → fsync dir; every reader sees a complete "
            "old or new model (hash check), never a mix"
        ),
    ),
    Scenario(
        "D6",
        "Authenticated rollback",
        (
            "Previous version serving within 1 cycle; last 3 versions kept; GC never deletes "
            "current/previous"
        ),
    ),
    Scenario(
        "D7",
        "Retrain triggered during a retrain; two processes",
        "409 Conflict; `max_instances=1` + file lock → exactly one run",
    ),
    Scenario(
        "D8",
        "History partial or shorter than encoder + horizon",
        "Refused with reason; no promotion",
    ),
    Scenario(
        "D9",
        "Training load on 2 cores",
        "Child process, `nice 10`, torch threads = 1; serving targets 3/10 still met",
    ),
    Scenario(
        "D10",
        "Shadow stage",
        (
            "Candidate forecasts for K cycles, scored on realized error, not exported as live "
            "series; promotion only after K cycles"
        ),
    ),
    Scenario(
        "E1",
        "Disk full (1 MB tmpfs on model/snapshot dir)",
        (
            "ENOSPC → temp removed, old model kept, `forecaster_persist_errors_total`; serving "
            "continues"
        ),
    ),
    Scenario(
        "E2",
        "Read-only filesystem",
        "Same as E1; startup still serves from memory",
    ),
    Scenario(
        "E3",
        "Clock skew ±10 min vs Prometheus (`faketime`)",
        (
            "Windows anchored to Prometheus time (`Date` header or `time()`); no empty windows; "
            "no timestamps exported"
        ),
    ),
    Scenario(
        "E4",
        "Clock stepped back 1 h",
        "Scheduler uses a monotonic clock: no double run, no stall",
    ),
    Scenario(
        "E5",
        "10k failed connections; 10k WS connects/disconnects",
        "Open fds and threads return to baseline ±2",
    ),
    Scenario(
        "F1",
        "16 concurrent scrapers, 60 s, 1,920-series snapshot",
        "p99 ≤ 25 ms, 0 errors",
    ),
    Scenario(
        "F2",
        "Scrapes during a forecast cycle and during retrain",
        "p99 ≤ 2× F1",
    ),
    Scenario(
        "F3",
        "250 WS clients, 10 never read, 2 msg/s × 20 KB",
        (
            "Fan-out p99 ≤ 250 ms; stalled clients dropped when their buffer is full; "
            "`max_clients` reached → close 1013"
        ),
    ),
    Scenario(
        "F4",
        "REST flood 30 s",
        "Bounded latency or 429; no crash",
    ),
    Scenario(
        "F5",
        "Soak (CI 10 min accelerated; extended 2 h)",
        "Targets 8–9; 0 unhandled exceptions",
    ),
    Scenario(
        "G1",
        "SIGTERM when idle / mid-cycle / mid-retrain / with 100 WS clients",
        (
            "Exit 0 ≤ 10 s; cycle cancelled cleanly; child trainer terminated + temp removed; WS "
            "close 1001; snapshot flushed"
        ),
    ),
    Scenario(
        "G2",
        "SIGKILL, then restart",
        "Persisted snapshot served ≤ 5 s (before importing torch); no tmp left",
    ),
    Scenario(
        "G3",
        "Invalid config at start; invalid config on reload",
        (
            "Exit ≠ 0 naming the key (cf. `TestFailedStartupExitCode`); reload keeps old config, "
            "`forecaster_config_last_reload_successful 0`"
        ),
    ),
    Scenario(
        "G4",
        "Second instance on the same port / data dir",
        "Exits with a clear error (lock file)",
    ),
    Scenario(
        "H1",
        "Default listen addresses (forecaster API/WS/metrics, simulator)",
        "127.0.0.1 only; 0.0.0.0 requires an explicit flag (test inspects the sockets)",
    ),
    Scenario(
        "H2",
        "Mutating endpoints (retrain trigger, rollback, simulator scenario control)",
        (
            "No token configured → served on loopback only (the service refuses a non-loopback "
            "listener without a token); missing token 401; wrong token 403; "
            "`hmac.compare_digest`; a route-table test fails if a new POST/PUT/DELETE route lacks"
            " auth"
        ),
    ),
    Scenario(
        "H3",
        "TLS on (exporter-toolkit `tls_server_config`)",
        (
            "HTTPS only, TLS ≥ 1.2; optional mTLS; optional bcrypt `basic_auth_users` from the "
            "same file"
        ),
    ),
    Scenario(
        "H4",
        "Secrets",
        (
            "Slack/PagerDuty only via Alertmanager `api_url_file`/`routing_key_file`; repo scan "
            "(Slack hook URL, 32-hex routing-key patterns) in CI; forced connection error with a "
            "canary credential → canary absent from logs and from any config/status endpoint "
            "(`<secret>`)"
        ),
    ),
    Scenario(
        "H5",
        "Input limits",
        (
            "Body ≤ 1 MB, WS inbound `max_size` 64 KB, query params capped, simulator scenario "
            "bounds (≤ 1,000 servers)"
        ),
    ),
    Scenario(
        "H6",
        "Path traversal in model version / file params",
        "400; names must match `^[0-9a-z_.-]{1,64}$`",
    ),
    Scenario(
        "H7",
        "WS from a foreign `Origin`",
        "403 (cross-site WebSocket hijacking)",
    ),
    Scenario(
        "H8",
        "Error bodies",
        "JSON `{error, reason}`; no traceback or filesystem paths",
    ),
    Scenario(
        "H9",
        "Static checks",
        (
            "ruff `S` (bandit) clean on src; no `yaml.load`, `eval`, `pickle`, "
            "`subprocess(shell=True)`"
        ),
    ),
    Scenario(
        "I1",
        "`promtool check rules` + `promtool test rules`",
        (
            "Every alert has a firing and a non-firing case, a `for` boundary case and a "
            "missing/`stale` input case"
        ),
    ),
    Scenario(
        "I2",
        "`amtool check-config`; `amtool config routes test --verify.receivers`",
        (
            "Each severity → expected receiver; critical inhibits warning with `equal: [instance,"
            " quantity]`"
        ),
    ),
    Scenario(
        "I3",
        (
            'End to end: simulator "disk fill" scenario → risk gauge → Prometheus rule → '
            "Alertmanager → webhook sink"
        ),
        (
            "Exactly one notification per group within `group_wait` + eval interval + 30 s; "
            "resolved notification after the scenario ends"
        ),
    ),
    Scenario(
        "I4",
        "Meta-alerts",
        (
            "`ForecasterDown` (`up==0` or `absent`, 5m); `ForecasterStale` (`time() - "
            "forecaster_last_success_timestamp_seconds > 3×cycle`); `ForecasterRetrainFailing` "
            '(the "two full runs" batch-job rule, prometheus/docs `practices/alerting.md`); '
            "`ForecasterSourceDown`"
        ),
    ),
    Scenario(
        "I5",
        "Webhook sink returns 500 for 2 min",
        (
            "Alertmanager retries (`alertmanager_notifications_failed_total` rises) and delivers "
            "after recovery"
        ),
    ),
)

# How the tests meet a row where their injection or check differs from the catalogue's words
# (the project's documented variant), and what a row not covered yet would need.
NOTES: dict[str, str] = {
    "A2": (
        "The outage is a fake Prometheus failing for a few cycles of a fake clock; "
        "withdrawal after `stale_after` is checked on the exporter's clock."
    ),
    "A3": (
        "`/metrics` serves the body rendered once per cycle, so a slow source cannot change "
        "its latency; the p99 itself is measured by `make bench`."
    ),
    "A9": (
        "The cycle does not probe `/-/ready`: during the replay its queries get 503 and are "
        "retried with backoff like any 5xx; the first cycle after the replay is fresh."
    ),
    "B3": (
        "A long gap carries the last observation forward, marked unobserved; a series missing "
        'more than 20 % of its window is skipped (`reason="missing"`).'
    ),
    "B6": "Instance labels over 256 bytes are dropped on ingest (`bad_instance`).",
    "B7": (
        "Server names are checked against the allow-list; no user input is spliced into "
        "PromQL, so there is no property test against a real Prometheus."
    ),
    "B9": "Checked with `promtool test rules` on the contract's `rate()` expression.",
    "C2": 'Refusals are counted as `reason="invalid"` (schema) or `reason="checksum"`.',
    "D5": "4 reader threads parse the pointer during the swap.",
    "D9": (
        "`nice 10` and one torch thread are checked; serving targets under training load are "
        "measured by `make bench`."
    ),
    "D10": (
        "`--shadow.cycles K` (default 0, off): tested with the shipped models as serving and "
        "candidate, real backtests on newer simulated history, 2 cycles."
    ),
    "E1": "A fault hook makes writes fail with ENOSPC after 4 KiB instead of a tmpfs mount.",
    "E2": "A fault hook makes writes fail with EROFS instead of a read-only mount.",
    "E3": "The local clock is offset by ±10 min in process instead of with `faketime`.",
    "E4": "The cycle loop runs on fake monotonic and wall clocks.",
    "E5": "10,000 failed connections; 300 WebSocket connects and disconnects.",
    "F1": (
        "Every answer is checked whole over real HTTP; the p99 figure is measured by "
        "`make bench` (bench/scrape.py), since tests assert no wall-clock times."
    ),
    "F2": (
        "Scrapes during back-to-back publishes beside the TFT forward and beside a real "
        "training child; the p99 ratio is measured by `make bench` (bench/scrape.py)."
    ),
    "F3": (
        "In process with fake sockets, 20 messages of 20 KB back to back: every reader gets "
        "every message, the stalled ones are dropped, the 251st is refused. The p99 is a "
        "benchmark figure (`make bench`, bench/websocket.py), not a test assertion."
    ),
    "F4": (
        "1,600 requests from 8 threads in process instead of 30 s: every answer 200, 404 or "
        "429, the service healthy and `/metrics` unchanged after; latency is not asserted."
    ),
    "F5": (
        "10 min in the suite (`tools.soak`: the real forecaster, 10 s cycles, 16 scrapers, 50 "
        "WebSocket clients, a version promoted and reloaded every 3 min in place of a retrain, "
        "whose training runs in the retrainer's child); the long run's report is docs/SOAK.md."
    ),
    "G1": (
        "SIGTERM is sent to an idle forecaster and to a retrainer mid-retrain; WebSocket close "
        "1001 is checked on the broadcaster."
    ),
    "G2": (
        "The restart test starts from a persisted snapshot and allows 20 s "
        "(2.4-2.6 s measured); SIGKILL is not sent."
    ),
    "H1": (
        "The tests check the default addresses and the refusal of a public listener without "
        "a token; none inspects the bound sockets."
    ),
    "H3": (
        "The simulator's listener runs as a process with `--web.config.file` (one module, "
        "`webcommon.webconfig`, serves the forecaster's and the retrainer's too); TLS 1.2 is "
        "the lowest version offered, 1.0 and 1.1 are refused in the file."
    ),
    "H7": "Refused with close code 1008 (policy violation) during the handshake.",
    "I1": (
        "A firing and a not-firing case are asserted per alert; the `for` boundary and stale "
        "input cases are not checked per alert."
    ),
    "I3": "A latency-degradation incident instead of a disk fill; deadlines of 10 min.",
    "I5": (
        "Three failed posts instead of 2 min; Alertmanager 0.25 counts failed attempts in "
        "`alertmanager_notification_requests_failed_total`."
    ),
}
