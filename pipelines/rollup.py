"""Roll-ups per building and for the whole community from interval energy, with demand and carbon.

Input: interval rows from :mod:`pipelines.intervals` (several emissions of one interval may be
present; the last one in the arrays wins, as in a store that overwrites). Per group (building, and
the community as one more group) and aligned interval:

* ``load_kwh``    consumption of the group's ordinary meters;
* ``pv_kwh``      generation of its PV meters (``meter_is_pv``), which offsets grid import;
* ``import_kwh``  ``max(load - pv, 0)`` (what the grid supplied), ``export_kwh`` ``max(pv - load, 0)``;
* ``demand_kw``   import energy / interval length in hours (15-min kWh x 4);
* ``complete``    every meter of the group delivered a complete interval.

The community nets load and PV across all its buildings in each interval (one point of common
coupling), so its import can be lower than the sum of the buildings' imports.

Per group over the period: energy totals, mean demand (import energy / period length), peak
demand and when it happened, load factor (mean / peak), carbon (import x emission factor) and the
carbon avoided by PV that was used on site ((load - import) x factor). Exported PV is not credited:
what the grid does with it is outside the community's meters.

Emission factors are dated configuration: the Ministry of Ecology and Environment and the National
Bureau of Statistics publish a new data year roughly every year and values move several percent.
The default is the **national average for data year 2023: 0.5306 kgCO2/kWh** (see
shared/reference/carbon-factors.md, table A.1); regional and older figures are kept alongside.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from pipelines.intervals import IntervalRows

HOUR_NS = 3_600 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class EmissionFactor:
    """A grid CO2 emission factor with the data year and calibre it belongs to."""

    kg_per_kwh: float
    data_year: int
    region: str  # "national" or a regional grid
    calibre: str  # "average", "excluding market-traded non-fossil", "fossil"
    source: str


_MEE_NBS = "MEE/NBS electricity CO2 emission factors"

CHINA_NATIONAL_AVERAGE_2023 = EmissionFactor(0.5306, 2023, "national", "average", _MEE_NBS + ", data year 2023")
CHINA_NATIONAL_AVERAGE_2022 = EmissionFactor(0.5366, 2022, "national", "average", _MEE_NBS + ", data year 2022")
CHINA_NATIONAL_AVERAGE_2021 = EmissionFactor(0.5568, 2021, "national", "average", _MEE_NBS + ", data year 2021")
DEFAULT_EMISSION_FACTOR = CHINA_NATIONAL_AVERAGE_2023

# Regional grid averages, data year 2023 (which provinces belong to which region is not hard-coded:
# the official annex was not available).
CHINA_REGIONAL_AVERAGE_2023: dict[str, EmissionFactor] = {
    region: EmissionFactor(value, 2023, region, "average", _MEE_NBS + ", data year 2023")
    for region, value in {
        "north": 0.6361,
        "northeast": 0.5122,
        "east": 0.5500,
        "central": 0.5271,
        "northwest": 0.5543,
        "south": 0.4042,
        "southwest": 0.2472,
    }.items()
}


@dataclass(slots=True)
class GroupRollup:
    """Arrays per group (first axis) and per interval (second axis), and per-group summaries."""

    load_kwh: np.ndarray  # (G, T) float64
    pv_kwh: np.ndarray  # (G, T)
    import_kwh: np.ndarray  # (G, T)
    export_kwh: np.ndarray  # (G, T)
    demand_kw: np.ndarray  # (G, T) import demand
    complete: np.ndarray  # (G, T) bool
    energy_kwh: np.ndarray  # (G,) consumption (load) over the period
    pv_total_kwh: np.ndarray  # (G,)
    import_total_kwh: np.ndarray  # (G,)
    export_total_kwh: np.ndarray  # (G,)
    mean_kw: np.ndarray  # (G,) import energy / period length
    peak_kw: np.ndarray  # (G,) highest interval import demand
    peak_start_ns: np.ndarray  # (G,) int64 start of the peak interval
    load_factor: np.ndarray  # (G,) mean / peak; NaN when the peak is 0
    carbon_kg: np.ndarray  # (G,) import x factor
    carbon_avoided_kg: np.ndarray  # (G,) PV used on site x factor
    n_complete: np.ndarray  # (G,) int32 complete intervals


@dataclass(slots=True)
class Rollup:
    """Buildings (G = n_buildings) and the community (G = 1) over one period."""

    period_start_ns: int
    interval_ns: int
    factor: EmissionFactor
    buildings: GroupRollup
    community: GroupRollup


@numba.njit(cache=True, error_model="numpy", no_cfunc_wrapper=True)  # (called from Python only)
def _rollup_kernel(meter, start, energy, coverage, meter_group, meter_pv, n_groups, p0, n_t, I_ns,
                   seen, load, pv, n_full):  # pragma: no cover - compiled
    # Walk the rows backwards so the last emission of an interval is the one that counts.
    # (Written for a short compile: a forward loop over a reversed index, NaN/inf tested by
    # arithmetic instead of np.isfinite, numpy's error model as I_ns > 0 is checked by the caller.)
    n_m = meter_group.shape[0]
    n_rows = meter.shape[0]
    for i in range(n_rows):
        r = n_rows - 1 - i
        m = meter[r]
        if m < 0 or m >= n_m:
            continue
        off = start[r] - p0
        if off < 0 or off % I_ns != 0:
            continue
        j = off // I_ns
        if j >= n_t or seen[m, j] != 0:
            continue
        seen[m, j] = 1
        g = meter_group[m]
        if g < 0 or g >= n_groups:
            continue
        e = energy[r]
        if not e - e == 0.0:  # NaN or infinite: missing
            continue
        if meter_pv[m]:
            pv[g, j] += e
            pv[n_groups, j] += e
        else:
            load[g, j] += e
            load[n_groups, j] += e
        if coverage[r] >= 1.0:
            n_full[g, j] += 1
            n_full[n_groups, j] += 1


def _group_rollup(load: np.ndarray, pv: np.ndarray, full: np.ndarray, n_meters: np.ndarray,
                  p0: int, interval_ns: int, factor: float) -> GroupRollup:
    hours = interval_ns / HOUR_NS
    n_t = load.shape[1]
    net = load - pv
    imp = np.maximum(net, 0.0)
    exp = np.maximum(-net, 0.0)
    demand = imp / hours
    complete = (full == n_meters[:, None]) & (n_meters[:, None] > 0)
    imp_tot = imp.sum(axis=1)
    load_tot = load.sum(axis=1)
    mean_kw = imp_tot / (n_t * hours) if n_t else np.full(len(load), np.nan)
    if n_t:
        peak_j = demand.argmax(axis=1)
        peak = demand[np.arange(len(load)), peak_j]
    else:
        peak_j = np.zeros(len(load), dtype=np.int64)
        peak = np.zeros(len(load))
    with np.errstate(divide="ignore", invalid="ignore"):
        lf = np.where(peak > 0, mean_kw / np.where(peak > 0, peak, 1.0), np.nan)
    return GroupRollup(
        load_kwh=load, pv_kwh=pv, import_kwh=imp, export_kwh=exp, demand_kw=demand, complete=complete,
        energy_kwh=load_tot, pv_total_kwh=pv.sum(axis=1), import_total_kwh=imp_tot,
        export_total_kwh=exp.sum(axis=1), mean_kw=mean_kw, peak_kw=peak,
        peak_start_ns=p0 + peak_j.astype(np.int64) * interval_ns, load_factor=lf,
        carbon_kg=imp_tot * factor, carbon_avoided_kg=(load_tot - imp_tot) * factor,
        n_complete=complete.sum(axis=1).astype(np.int32),
    )


def rollup(
    rows: IntervalRows,
    meter_building: np.ndarray,
    meter_is_pv: np.ndarray,
    n_buildings: int,
    period_start_ns: int,
    n_intervals: int,
    interval_ns: int,
    factor: EmissionFactor = DEFAULT_EMISSION_FACTOR,
) -> Rollup:
    """Roll interval rows up per building and for the community over ``n_intervals`` intervals
    starting at ``period_start_ns`` (aligned to ``interval_ns``; rows outside are ignored).

    ``meter_building``: int32 building index per meter (-1: not in any building, ignored);
    ``meter_is_pv``: bool per meter. Rows with NaN energy count as missing.
    """
    if interval_ns <= 0 or n_intervals < 0 or n_buildings < 0:
        raise ValueError("interval_ns > 0, n_intervals >= 0 and n_buildings >= 0 required")
    mb = np.ascontiguousarray(meter_building, dtype=np.int32)
    pvm = np.ascontiguousarray(meter_is_pv, dtype=np.bool_)
    if len(mb) != len(pvm):
        raise ValueError("meter_building and meter_is_pv must have one entry per meter")
    n_m = len(mb)
    seen = np.zeros((n_m, n_intervals), dtype=np.uint8)  # one byte per meter and interval
    load = np.zeros((n_buildings + 1, n_intervals))
    pv = np.zeros((n_buildings + 1, n_intervals))
    full = np.zeros((n_buildings + 1, n_intervals), dtype=np.int32)
    if len(rows):
        _rollup_kernel(
            np.ascontiguousarray(rows.meter, dtype=np.int32), np.ascontiguousarray(rows.start_ns, dtype=np.int64),
            np.ascontiguousarray(rows.energy_kwh, dtype=np.float64),
            np.ascontiguousarray(rows.coverage, dtype=np.float32), mb, pvm, np.int64(n_buildings),
            np.int64(period_start_ns), np.int64(n_intervals), np.int64(interval_ns), seen, load, pv, full,
        )
    valid = (mb >= 0) & (mb < n_buildings)
    per_b = np.bincount(mb[valid], minlength=n_buildings).astype(np.int32)[:n_buildings]
    f = float(factor.kg_per_kwh)
    b = _group_rollup(load[:n_buildings], pv[:n_buildings], full[:n_buildings], per_b,
                      period_start_ns, interval_ns, f)
    c = _group_rollup(load[n_buildings:], pv[n_buildings:], full[n_buildings:],
                      np.array([per_b.sum()], dtype=np.int32), period_start_ns, interval_ns, f)
    return Rollup(int(period_start_ns), int(interval_ns), factor, b, c)
