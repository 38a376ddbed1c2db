"""What the fuzz targets share: the hypothesis profiles and the hostile-input strategies.

Profiles (registered here, selected by `tests/fuzz/conftest.py`'s environment):

- `fuzz-ci` (default): 500 examples per property, derandomized (the same examples on every
  run, so CI is deterministic), no deadline (2 slow cores), no example database.
- `fuzz-long` (when `FUZZ_SECONDS` is set): random seeds, chunks of `LONG_CHUNK` examples that
  the conftest repeats until each target has run for about `FUZZ_SECONDS` (hypothesis has no
  time budget of its own); `python -m tools.fuzz` drives it and writes `docs/FUZZ.md`.

The names are not hypothesis' built-in `ci` / `default`: loading those would change the
settings of every other hypothesis test in the suite. Each fuzz property is decorated with
`FUZZ`, the active profile, rather than loading it globally, for the same reason.

`too_slow` is suppressed: drawing recursive JSON, frames and snapshots on 2 slow cores takes
longer than hypothesis' generation budget, which says nothing about the code under test.
"""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CI_PROFILE = "fuzz-ci"
LONG_PROFILE = "fuzz-long"
CI_EXAMPLES = 500
LONG_CHUNK = 1000
SECONDS_VARIABLE = "FUZZ_SECONDS"
PROFILE_VARIABLE = "FUZZ_PROFILE"
CHUNK_VARIABLE = "FUZZ_CHUNK"  # examples per call in the long run (default LONG_CHUNK)

settings.register_profile(
    CI_PROFILE,
    max_examples=CI_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    LONG_PROFILE,
    settings.get_profile(CI_PROFILE),
    max_examples=int(os.environ.get(CHUNK_VARIABLE, LONG_CHUNK)),
    derandomize=False,
)


def fuzz_seconds() -> float | None:
    """The long run's budget per target (`FUZZ_SECONDS`), or None for the CI profile."""
    raw = os.environ.get(SECONDS_VARIABLE, "").strip()
    if not raw:
        return None
    seconds = float(raw)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{SECONDS_VARIABLE}={raw!r}: expected a positive number of seconds")
    return seconds


def active_profile() -> str:
    """`fuzz-long` when `FUZZ_SECONDS` is set, else `FUZZ_PROFILE` or `fuzz-ci`."""
    if fuzz_seconds() is not None:
        return LONG_PROFILE
    return os.environ.get(PROFILE_VARIABLE, "").strip() or CI_PROFILE


FUZZ = settings.get_profile(active_profile())
"""The decorator of every fuzz property: the active profile's settings."""

# --- hostile values -----------------------------------------------------------------------------

ODD_FLOATS = (
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-320,
    0.1,
    1.0,
    -1.0,
    999_999.999,
    1e6,
    52_000_000.0,
    2.0**53,
    2.0**53 + 2,
    1e15,
    1e16,
    1.7e18,
    1e21,
    9.2e9,
    -9.2e9,
    1.7976931348623157e308,
    -1.7976931348623157e308,
)
"""Floats on the edges: NaN, infinities, signed zeros, subnormals, float64's ends, the
exponent switch of the exposition (1e6, 1e21), the magnitude limit and datetime64's span."""
ODD_INTS = (0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400, -(10**400))
"""Integers json.loads gives: beyond int64, beyond float64 (10**400 has no float)."""
ODD_TEXT = (
    "",
    " ",
    "NaN",
    "nan",
    "+Inf",
    "-Inf",
    "inf",
    "Infinity",
    "1e999",
    "-1e999",
    "0x10",
    "1_000",
    " 2 ",
    "١٢",
    "1.5",
    "null",
    "\x00",
    "\ud800",
    "a\nb",
    '"',
    "\\",
    'a"} or vector(1) or x{y="',
    "ünïcødé 中文 \u200f\u202e",
    "x" * 300,
)
"""Strings that look like numbers, or are hostile as labels, paths or JSON."""

odd_floats = st.sampled_from(ODD_FLOATS)
any_floats = st.floats() | odd_floats
any_ints = st.integers() | st.sampled_from(ODD_INTS)
any_text = st.text(max_size=12) | st.sampled_from(ODD_TEXT)

json_scalars = st.none() | st.booleans() | any_ints | any_floats | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(any_text, inner, max_size=5),
    max_leaves=10,
)
"""Any value `json.loads` can return (NaN and infinities included: Python's JSON reads them),
with the numbers and strings above over-represented."""


def nested(depth: int) -> str:
    """JSON text nested `depth` lists deep (beyond ~1000, `json.loads` hits RecursionError)."""
    return "[" * depth + "]" * depth


deep_json = st.integers(1, 100_000).map(nested)
"""JSON text nested deeper than the interpreter's recursion limit, sometimes."""


def mutated(raw: bytes) -> st.SearchStrategy[bytes]:
    """`raw` truncated, with bytes overwritten, or with bytes inserted: near-valid files."""

    @st.composite
    def overwritten(draw: st.DrawFn) -> bytes:
        out = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            if out:
                out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)

    truncated = st.integers(0, max(0, len(raw) - 1)).map(lambda n: raw[:n])
    inserted = st.tuples(st.integers(0, len(raw)), st.binary(min_size=1, max_size=16)).map(
        lambda pair: raw[: pair[0]] + pair[1] + raw[pair[0] :]
    )
    return truncated | overwritten() | inserted
