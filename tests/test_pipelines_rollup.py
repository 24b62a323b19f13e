"""Roll-ups per building and community: energy, demand, load factor, PV offset and carbon, by hand."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.intervals import IntervalRows
from pipelines.rollup import (
    CHINA_NATIONAL_AVERAGE_2023,
    CHINA_REGIONAL_AVERAGE_2023,
    DEFAULT_EMISSION_FACTOR,
    rollup,
)

MIN = 60 * 1_000_000_000
QUARTER = 15 * MIN
P0 = 1_704_038_400 * 1_000_000_000  # aligned to 15 minutes

# meters: 0 load (b0), 1 PV (b0), 2 load (b1), 3 load (b1), 4 not in a building
ENERGY = {
    0: [1.0, 2.0, 3.0, 0.5],
    1: [0.0, 2.5, 1.0, 0.0],
    2: [0.5, 0.5, 0.5, 0.5],
    3: [0.25, 0.75, 1.0, 0.0],
    4: [9.0, 9.0, 9.0, 9.0],
}
MB = np.array([0, 0, 1, 1, -1], np.int32)
PV = np.array([False, True, False, False, False])


def _rows():
    meter, start, energy, cov = [0], [P0 + QUARTER], [9.9], [1.0]  # superseded emission
    for m, es in ENERGY.items():
        for j, e in enumerate(es):
            meter.append(m)
            start.append(P0 + j * QUARTER)
            energy.append(e)
            cov.append(0.5 if (m == 3 and j == 3) else 1.0)
    meter.append(0)
    start.append(P0 + 4 * QUARTER)  # outside the period
    energy.append(100.0)
    cov.append(1.0)
    return IntervalRows(np.array(meter, np.int32), np.array(start, np.int64), np.array(energy),
                        np.zeros(len(meter), np.uint8), np.array(cov, np.float32))


@pytest.fixture(scope="module")
def result():
    return rollup(_rows(), MB, PV, 2, P0, 4, QUARTER)


def test_default_factor_is_the_2023_national_average():
    assert DEFAULT_EMISSION_FACTOR is CHINA_NATIONAL_AVERAGE_2023
    assert DEFAULT_EMISSION_FACTOR.kg_per_kwh == 0.5306 and DEFAULT_EMISSION_FACTOR.data_year == 2023
    assert CHINA_REGIONAL_AVERAGE_2023["east"].kg_per_kwh == 0.5500


def test_building_with_pv(result):
    b = result.buildings
    np.testing.assert_allclose(b.load_kwh[0], [1.0, 2.0, 3.0, 0.5])
    np.testing.assert_allclose(b.pv_kwh[0], [0.0, 2.5, 1.0, 0.0])
    np.testing.assert_allclose(b.import_kwh[0], [1.0, 0.0, 2.0, 0.5])
    np.testing.assert_allclose(b.export_kwh[0], [0.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(b.demand_kw[0], [4.0, 0.0, 8.0, 2.0])  # kWh x 4
    assert b.energy_kwh[0] == pytest.approx(6.5)
    assert b.import_total_kwh[0] == pytest.approx(3.5)
    assert b.peak_kw[0] == pytest.approx(8.0) and b.peak_start_ns[0] == P0 + 2 * QUARTER
    assert b.mean_kw[0] == pytest.approx(3.5)  # 3.5 kWh over one hour
    assert b.load_factor[0] == pytest.approx(3.5 / 8.0)
    assert b.carbon_kg[0] == pytest.approx(3.5 * 0.5306)
    assert b.carbon_avoided_kg[0] == pytest.approx(3.0 * 0.5306)  # PV used on site
    assert b.n_complete[0] == 4


def test_building_without_pv_and_an_incomplete_interval(result):
    b = result.buildings
    np.testing.assert_allclose(b.demand_kw[1], [3.0, 5.0, 6.0, 2.0])
    assert b.energy_kwh[1] == pytest.approx(4.0) and b.import_total_kwh[1] == pytest.approx(4.0)
    assert b.peak_kw[1] == pytest.approx(6.0)
    assert b.load_factor[1] == pytest.approx(4.0 / 6.0)
    assert b.carbon_kg[1] == pytest.approx(4.0 * 0.5306)
    assert b.complete[1].tolist() == [True, True, True, False]
    assert b.n_complete[1] == 3


def test_community_nets_pv_across_buildings(result):
    c = result.community
    np.testing.assert_allclose(c.import_kwh[0], [1.75, 0.75, 3.5, 1.0])
    assert c.import_total_kwh[0] == pytest.approx(7.0)  # less than 3.5 + 4.0: b0's export feeds b1
    assert c.energy_kwh[0] == pytest.approx(10.5) and c.pv_total_kwh[0] == pytest.approx(3.5)
    assert c.peak_kw[0] == pytest.approx(14.0) and c.mean_kw[0] == pytest.approx(7.0)
    assert c.load_factor[0] == pytest.approx(0.5)
    assert c.carbon_kg[0] == pytest.approx(7.0 * 0.5306)
    assert c.n_complete[0] == 3


def test_custom_factor_and_empty_input():
    r = rollup(_rows(), MB, PV, 2, P0, 4, QUARTER, CHINA_REGIONAL_AVERAGE_2023["east"])
    assert r.community.carbon_kg[0] == pytest.approx(7.0 * 0.55)
    empty = IntervalRows(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0), np.empty(0, np.uint8),
                         np.empty(0, np.float32))
    r = rollup(empty, MB, PV, 2, P0, 4, QUARTER)
    assert (r.buildings.energy_kwh == 0).all() and np.isnan(r.buildings.load_factor).all()
    assert not r.buildings.complete.any()
    with pytest.raises(ValueError):
        rollup(empty, MB, PV[:2], 2, P0, 4, QUARTER)
