"""Runs the numba core on every batch the gateway accepts and turns its results into series.

Per batch (columnar all the way: one numpy operation per stage, never a Python object per point):

1. VEE on the energy counters (rollover, replacement, resets, gaps) -> corrected deltas;
2. anomaly scores on every scored series -> ``anomaly`` points where the score is above zero,
   and alerts with hysteresis on the scores;
3. interval energy (1 and 15 minutes by default) -> ``energy_interval``; closed (or re-opened by late
   data) 15-minute intervals are rolled up per building and for the community -> ``energy_rollup``,
   including the day so far (peak demand, load factor, carbon);
4. the safety rules (trapped passenger, door open while moving, stop outside the landing zone,
   fire lane blocked, crowding at a gate, device offline) on the latest values of each instance.

What comes out is one more ``ReadingBatch`` of derived series (written through the same encoder and
outbox as the readings) and a list of alert events (written, logged and published northbound).
Which series are scored, counted or rolled up follows from the schema (field kinds) and the
configuration (buildings, PV meters), so nothing here names a device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines import rules
from pipelines.batch import ReadingBatch
from pipelines.detect import REASON_FLATLINE, REASON_NAMES, AlertState, DetectorParams, DetectorState, pack_params, \
    score_batch, update_alerts
from pipelines.growth import grown_capacity
from pipelines.intervals import IntervalRows, IntervalState, accumulate_intervals, concat_rows, flush_intervals
from pipelines.rollup import EmissionFactor, rollup
from pipelines.schema import measurement as lookup_measurement
from pipelines.series import SeriesRegistry
from pipelines.validate import VeeParams, VeeState, pack_vee_params, validate_batch

MINUTE_NS = 60 * 1_000_000_000
DAY_NS = 86_400 * 1_000_000_000
LOCAL_OFFSET_NS = 8 * 3600 * 1_000_000_000  # days and peaks follow China Standard Time

# Detector kinds: rows of the parameter table. Which series get which kind comes from the schema.
KIND_NONE, KIND_GAUGE, KIND_ENERGY_COUNTER, KIND_COUNT = -1, 0, 1, 2
KIND_NAMES = {"gauge": KIND_GAUGE, "energy_counter": KIND_ENERGY_COUNTER, "count": KIND_COUNT}
INF = float("inf")
DEFAULT_DETECTORS = {
    # a slot of the time-of-day baseline needs more than one day of 1-minute polls before it scores,
    # or "yesterday at this time" is only "a few minutes ago" on the first day
    "gauge": DetectorParams(seasonal_min_count=20),
    # kWh registers are quantised (a float32 near 2,000 kWh moves in 0.24 Wh steps), so the rate
    # derived from one poll to the next is too coarse for the level, time-of-day and spike detectors:
    # the power gauge carries those; the counter is watched for what only a counter shows
    # (negative or impossible steps: rollover, replacement, reset) and for being stuck. A household
    # draws at most ~60 kW (3 x 80 A); 250 kW covers building common loads too.
    "energy_counter": DetectorParams.counter(max_per_hour=250.0, level_z_lo=INF, level_z_hi=INF, seasonal=False,
                                             spike_z_lo=INF, spike_z_hi=INF),
    "count": DetectorParams(flat_seconds=0.0, seasonal_min_count=20),
}
# what is scored: the fields that carry a device's behaviour (the others follow from them: phase
# currents from power, apparent power from power and power factor) and would only repeat an alert
SCORED_FIELDS = {("energy_meter", "active_power"), ("energy_meter", "energy_import"), ("elevator", "speed"),
                 ("elevator", "load"), ("people_counter", "in_count"), ("people_counter", "out_count")}
ENERGY_FIELD = "energy_import"  # the counter intervals are computed from (consumption, or PV generation)


@dataclass(frozen=True, slots=True)
class RuleTimes:
    trapped_passenger_s: float = 180.0
    door_open_while_moving_s: float = 2.0
    stopped_outside_landing_s: float = 45.0
    fire_lane_s: float = 300.0
    crowding_per_minute: float = 60.0
    crowding_s: float = 60.0
    device_offline_s: float = 300.0
    clear_after_s: float = 10.0


@dataclass(frozen=True, slots=True)
class AnalyticsSettings:
    site: str
    interval_minutes: tuple[int, ...] = (1, 15)
    lateness_s: float = 120.0
    max_gap_s: float = 7200.0
    factor: EmissionFactor | None = None
    detectors: dict[str, DetectorParams] = field(default_factory=lambda: dict(DEFAULT_DETECTORS))
    vee: VeeParams = VeeParams()
    alert_raise: float = 0.8
    alert_clear: float = 0.2
    rules: RuleTimes = RuleTimes()
    write_scores: bool = True


@dataclass(frozen=True, slots=True)
class AlertEvent:
    ts_ns: int
    device: str
    building: str
    rule: str
    raised: bool
    value: float


@dataclass
class _RuleSet:
    """One rule's instances: the series each instance reads, and their held state."""

    rule: rules.HeldRule
    inputs: tuple[str, ...]  # field names, in the order the condition takes them
    lines: dict[int, int] = field(default_factory=dict)  # registry line id -> instance
    series: list[list[int]] = field(default_factory=list)  # per instance: series id per input
    device: list[str] = field(default_factory=list)
    building: list[str] = field(default_factory=list)
    state: rules.HeldState = field(default_factory=rules.HeldState)


class Analytics:
    def __init__(self, registry: SeriesRegistry, settings: AnalyticsSettings, buildings: list[str],
                 pv_devices: set[str] = frozenset()) -> None:
        from pipelines.rollup import DEFAULT_EMISSION_FACTOR

        self.registry = registry
        self.s = settings
        self.factor = settings.factor or DEFAULT_EMISSION_FACTOR
        self.buildings = list(buildings)
        self.building_index = {b: i for i, b in enumerate(self.buildings)}
        self.pv_devices = set(pv_devices)
        self.det_table = pack_params([settings.detectors[k] for k in ("gauge", "energy_counter", "count")])
        self.vee_table = pack_vee_params([settings.vee])
        # detector and score-alert state have a row per scored series, not per series id: a scored
        # series registers two of its own (score, reason), and devices their health series, so rows
        # by id would be mostly unused (the seasonal table alone is 3 KiB per row)
        self.det = DetectorState(64)
        self.vee = VeeState(64)
        self.score_alerts = AlertState(64, settings.alert_raise, settings.alert_clear)
        span = int(settings.max_gap_s * 1e9)
        self.intervals = [(m, IntervalState(m * MINUTE_NS, lateness_ns=int(settings.lateness_s * 1e9), max_span_ns=span))
                          for m in settings.interval_minutes]
        self._n = 0  # series whose metadata is built
        cap = 64
        self.kind = np.full(cap, KIND_NONE, dtype=np.int32)
        self.vee_kind = np.zeros(cap, dtype=np.int32)  # one VEE parameter row for every meter
        self.is_counter = np.zeros(cap, dtype=bool)
        self.meter = np.full(cap, -1, dtype=np.int32)
        self.last_value = np.full(cap, np.nan)
        self.last_ts = np.zeros(cap, dtype=np.int64)
        self.prev_ts = np.zeros(cap, dtype=np.int64)
        self.score_sid = np.full(cap, -1, dtype=np.int32)
        self.reason_sid = np.full(cap, -1, dtype=np.int32)
        self.det_row = np.full(cap, -1, dtype=np.int32)  # series id -> its detector row (scored series)
        self.det_kind = np.zeros(cap, dtype=np.int32)  # by detector row
        self.det_is_counter = np.zeros(cap, dtype=bool)  # by detector row
        self.n_scored = 0
        self.alert_tags: dict[int, tuple[str, str, str]] = {}  # scored series -> (device, building, rule)
        self.meter_device: list[str] = []
        self.meter_building: list[int] = []
        self.meter_pv: list[bool] = []
        self.interval_sids: dict[int, np.ndarray] = {}  # minutes -> (meters, 3) series ids
        self.rows15: list[IntervalRows] = []
        t = settings.rules
        c = t.clear_after_s
        self.rule_sets = {
            "trapped_passenger": _RuleSet(rules.HeldRule("trapped_passenger", t.trapped_passenger_s, c),
                                          ("occupied", "door_state", "moving")),
            "door_open_while_moving": _RuleSet(rules.HeldRule("door_open_while_moving", t.door_open_while_moving_s, c),
                                               ("door_state", "moving")),
            "stopped_outside_landing": _RuleSet(rules.HeldRule("stopped_outside_landing", t.stopped_outside_landing_s, c),
                                                ("moving", "in_door_zone")),
            "fire_lane_blocked": _RuleSet(rules.HeldRule("fire_lane_blocked", t.fire_lane_s, c), ("occupied",)),
            "crowding": _RuleSet(rules.HeldRule("crowding", t.crowding_s, c), ("in_count",)),
            "device_offline": _RuleSet(rules.HeldRule("device_offline", t.device_offline_s, c), ("stale",)),
        }
        self._open_rule: dict[int, str] = {}  # scored series -> the rule name its open alert was raised under
        self.counters = {"scored": 0, "anomaly_points": 0, "intervals": 0, "rollups": 0, "alerts": 0}

    # -- metadata, built once per new series -----------------------------------------------------
    def _grow(self, n: int) -> None:
        cap = len(self.kind)
        if n <= cap:
            return
        new = grown_capacity(cap, n)
        for name, fill in (("kind", KIND_NONE), ("vee_kind", 0), ("is_counter", False), ("meter", -1), ("last_value", np.nan),
                           ("last_ts", 0), ("prev_ts", 0), ("score_sid", -1), ("reason_sid", -1), ("det_row", -1),
                           ("det_kind", 0), ("det_is_counter", False)):
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def refresh(self) -> None:
        """Classify series registered since the last call (called per batch; cheap when nothing is new).

        Classifying registers series of its own (anomaly scores, intervals, rule inputs not seen yet),
        so it repeats until the registry stops growing; derived measurements classify as nothing.
        """
        while self._n < len(self.registry):
            n = len(self.registry)
            self._grow(n + 64)
            new_lines: set[int] = set()
            for sid in range(self._n, n):
                self._classify(sid)
                new_lines.add(int(self.registry.line_of[sid]))
            self._n = n
            for line in sorted(new_lines):
                self._add_rule_instances(line)

    def _classify(self, sid: int) -> None:
        key = self.registry.keys[sid]
        f = lookup_measurement(key.measurement).field(key.field)
        tags = dict(key.tags)
        scored = (key.measurement, key.field) in SCORED_FIELDS
        if scored:
            if f.kind == "counter" and key.measurement == "energy_meter":
                self.kind[sid] = KIND_ENERGY_COUNTER
            elif key.measurement == "people_counter":
                self.kind[sid] = KIND_COUNT
            else:
                self.kind[sid] = KIND_GAUGE
            self.is_counter[sid] = f.kind == "counter"
            row = self.n_scored
            self.n_scored += 1
            self.det_row[sid] = row
            self.det_kind[row] = self.kind[sid]
            self.det_is_counter[row] = self.is_counter[sid]
            atags = {"site": self.s.site, "building": tags.get("building"), "device": tags.get("device"),
                     "source": key.measurement, "field": key.field}
            self.score_sid[sid] = self.registry.register("anomaly", atags, "score")
            self.reason_sid[sid] = self.registry.register("anomaly", atags, "reason")
            self.alert_tags[sid] = (tags.get("device", ""), tags.get("building", ""), f"anomaly_{key.field}")
        if key.measurement == "energy_meter" and key.field == ENERGY_FIELD:
            self.meter[sid] = len(self.meter_device)
            self.is_counter[sid] = True
            self._add_meter(tags)

    def _add_meter(self, tags: dict[str, str]) -> None:
        device = tags.get("device", "")
        self.meter_device.append(device)
        self.meter_building.append(self.building_index.get(tags.get("building", ""), -1))
        self.meter_pv.append(device in self.pv_devices)
        m = len(self.meter_device) - 1
        for minutes, _ in self.intervals:
            itags = {"site": self.s.site, "building": tags.get("building"), "device": device,
                     "interval": f"{minutes}m"}
            sids = [self.registry.register("energy_interval", itags, f) for f in ("energy", "coverage", "quality")]
            table = self.interval_sids.get(minutes, np.zeros((0, 3), dtype=np.int32))
            if len(table) <= m:
                table = np.vstack([table, np.zeros((m + 1 - len(table), 3), dtype=np.int32)])
            table[m] = sids
            self.interval_sids[minutes] = table

    def _add_rule_instances(self, line: int) -> None:
        measurement, tag_items = self.registry.lines[line]
        tags = dict(tag_items)
        if measurement == "elevator":
            names = ("trapped_passenger", "door_open_while_moving", "stopped_outside_landing")
        elif measurement == "parking_bay" and tags.get("zone") == "fire_lane":
            names = ("fire_lane_blocked",)
        elif measurement == "people_counter":
            names = ("crowding",)
        elif measurement == "device_health":
            names = ("device_offline",)
        else:
            return
        for name in names:
            rs = self.rule_sets[name]
            if line in rs.lines:
                continue
            rs.lines[line] = len(rs.series)
            rs.series.append([self.registry.register(measurement, tags, f) for f in rs.inputs])
            rs.device.append(tags.get("device", ""))
            rs.building.append(tags.get("building", ""))

    # -- the per-batch work --------------------------------------------------------------------
    def process(self, batch: ReadingBatch) -> tuple[ReadingBatch, list[AlertEvent]]:
        self.refresh()
        if len(batch) == 0:
            return ReadingBatch.empty(), []
        out: list[ReadingBatch] = []
        events: list[AlertEvent] = []
        sids = batch.series
        # latest values for the rules (arrival order: the last reading of a series wins)
        self.prev_ts[sids] = self.last_ts[sids]
        self.last_value[sids] = batch.value
        self.last_ts[sids] = batch.ts_ns
        scored = self.kind[sids] >= 0
        if scored.any():
            sb = batch.take(scored) if not scored.all() else batch
            rows = self.det_row[sb.series]
            score, reason = score_batch(ReadingBatch(rows, sb.ts_ns, sb.value, sb.quality), self.det, self.det_table,
                                        self.det_kind, self.det_is_counter)
            self.counters["scored"] += len(sb)
            if self.s.write_scores:
                hit = score > 0
                if hit.any():
                    s_ids = sb.series[hit]
                    ts = sb.ts_ns[hit]
                    out.append(ReadingBatch.from_arrays(
                        np.concatenate([self.score_sid[s_ids], self.reason_sid[s_ids]]), np.concatenate([ts, ts]),
                        np.concatenate([score[hit].astype(np.float64), reason[hit].astype(np.float64)])))
                    self.counters["anomaly_points"] += int(hit.sum())
            changes = update_alerts(rows, score, reason, self.score_alerts)
            for i in np.flatnonzero(changes):
                device, building, rule = self.alert_tags[int(sb.series[i])]
                if changes[i] > 0 and reason[i] == REASON_FLATLINE and rule == f"anomaly_{ENERGY_FIELD}":
                    rule = "meter_stuck"
                elif changes[i] > 0:
                    rule = f"{rule}_{REASON_NAMES[int(reason[i])]}"
                else:
                    rule = self._open_rule.pop(int(sb.series[i]), rule)
                if changes[i] > 0:
                    self._open_rule[int(sb.series[i])] = rule
                events.append(AlertEvent(int(sb.ts_ns[i]), device, building, rule, bool(changes[i] > 0),
                                         float(score[i])))
        meters = self.meter[sids] >= 0
        if meters.any():
            mb = batch.take(meters) if not meters.all() else batch
            checked = validate_batch(mb, self.vee, self.vee_table, self.vee_kind, self.is_counter)
            now = int(batch.ts_ns.max())
            for minutes, state in self.intervals:
                rows, _unplaced = accumulate_intervals(mb.series, mb.ts_ns, checked, self.meter, state, now_ts_ns=now)
                out.extend(self._interval_output(minutes, rows))
        events.extend(self._rules(np.unique(sids)))
        derived = ReadingBatch.concat(out) if out else ReadingBatch.empty()
        return derived, events

    def _interval_output(self, minutes: int, rows: IntervalRows) -> list[ReadingBatch]:
        if len(rows) == 0:
            return []
        self.counters["intervals"] += len(rows)
        table = self.interval_sids[minutes]
        sid = table[rows.meter]
        values = np.concatenate([rows.energy_kwh, rows.coverage.astype(np.float64), rows.quality.astype(np.float64)])
        out = [ReadingBatch.from_arrays(np.concatenate([sid[:, 0], sid[:, 1], sid[:, 2]]),
                                        np.tile(rows.start_ns, 3), values)]
        if minutes == 15:
            out.extend(self._rollups(rows))
        return out

    def _rollups(self, rows: IntervalRows) -> list[ReadingBatch]:
        """Re-roll every interval these rows touched (late data re-emits), and the days they fall in."""
        self.rows15.append(rows)
        all_rows = concat_rows(self.rows15)
        # keep two local days of rows: enough for today's and yesterday's daily figures
        horizon = int(all_rows.start_ns.max()) - 2 * DAY_NS
        keep = all_rows.start_ns >= horizon
        all_rows = IntervalRows(*(getattr(all_rows, f)[keep] for f in ("meter", "start_ns", "energy_kwh", "quality",
                                                                       "coverage")))
        self.rows15 = [all_rows]
        n_b = len(self.buildings)
        mb = np.array(self.meter_building, dtype=np.int32)
        pv = np.array(self.meter_pv, dtype=bool)
        I_ns = 15 * MINUTE_NS
        out = []
        days = np.unique((rows.start_ns + LOCAL_OFFSET_NS) // DAY_NS)
        for day in days:
            day0 = int(day) * DAY_NS - LOCAL_OFFSET_NS
            r = rollup(all_rows, mb, pv, n_b, day0, 96, I_ns, self.factor)
            touched = np.unique((rows.start_ns[(rows.start_ns >= day0) & (rows.start_ns < day0 + DAY_NS)] - day0) // I_ns)
            out.append(self._rollup_batch(r, touched.astype(np.int64), day0, I_ns))
            self.counters["rollups"] += 1
        return out

    def _rollup_batch(self, r, touched: np.ndarray, day0: int, I_ns: int) -> ReadingBatch:
        series, ts, values = [], [], []
        groups = [("building", b, r.buildings, i) for i, b in enumerate(self.buildings)] + \
                 [("community", None, r.community, 0)]
        for scope, building, g, i in groups:
            tags = {"site": self.s.site, "scope": scope, "building": building, "interval": "15m"}
            fields = {"load": g.load_kwh[i], "pv": g.pv_kwh[i], "import": g.import_kwh[i], "export": g.export_kwh[i],
                      "demand": g.demand_kw[i], "carbon": g.import_kwh[i] * self.factor.kg_per_kwh,
                      "carbon_avoided": (g.load_kwh[i] - g.import_kwh[i]) * self.factor.kg_per_kwh,
                      "complete": g.complete[i].astype(np.float64)}
            for f, arr in fields.items():
                sid = self.registry.register("energy_rollup", tags, f)
                series.append(np.full(len(touched), sid, dtype=np.int32))
                ts.append(day0 + touched * I_ns)
                values.append(arr[touched])
            dtags = {**tags, "interval": "1d"}
            daily = {"load": g.energy_kwh[i], "pv": g.pv_total_kwh[i], "import": g.import_total_kwh[i],
                     "export": g.export_total_kwh[i], "demand": g.mean_kw[i], "peak_demand": g.peak_kw[i],
                     "load_factor": g.load_factor[i], "carbon": g.carbon_kg[i],
                     "carbon_avoided": g.carbon_avoided_kg[i]}
            for f, v in daily.items():
                series.append(np.array([self.registry.register("energy_rollup", dtags, f)], dtype=np.int32))
                ts.append(np.array([day0], dtype=np.int64))
                values.append(np.array([v], dtype=np.float64))
        return ReadingBatch.from_arrays(np.concatenate(series), np.concatenate(ts), np.concatenate(values))

    def _rules(self, touched: np.ndarray | None, now_ns: int | None = None) -> list[AlertEvent]:
        """Evaluate the rules of instances whose inputs changed (or all of them on a clock tick)."""
        events: list[AlertEvent] = []
        for name, rs in self.rule_sets.items():
            if not rs.series:
                continue
            ids = np.array(rs.series, dtype=np.int64)  # (instances, inputs)
            if touched is not None:
                mask = np.isin(ids, touched).any(axis=1)
                inst = np.flatnonzero(mask)
                if len(inst) == 0:
                    continue
                ts = self.last_ts[ids[inst]].max(axis=1)
            else:
                inst = np.arange(len(ids))
                ts = np.full(len(inst), now_ns, dtype=np.int64)
            v = self.last_value[ids[inst]]
            if name == "trapped_passenger":
                cond = rules.trapped_passenger(v[:, 0], v[:, 1], v[:, 2])
            elif name == "door_open_while_moving":
                cond = rules.door_open_while_moving(v[:, 0], v[:, 1])
            elif name == "stopped_outside_landing":
                cond = rules.stopped_outside_landing(v[:, 0], v[:, 1])
            elif name == "fire_lane_blocked":
                cond = rules.bay_occupied(v[:, 0])
            elif name == "crowding":
                if touched is None:  # a rate is only known when a report arrives
                    continue
                sid = ids[inst, 0]
                since = (self.last_ts[sid] - self.prev_ts[sid]) / 1e9
                since = np.where(self.prev_ts[sid] > 0, since, 0.0)
                cond = rules.crowding(v[:, 0], since, self.s.rules.crowding_per_minute)
            else:
                cond = rules.stale(v[:, 0])
            change, held = rules.step_held(rs.rule, rs.state, inst, cond, ts)
            for k in np.flatnonzero(change):
                i = int(inst[k])
                events.append(AlertEvent(int(ts[k]), rs.device[i], rs.building[i], name, bool(change[k] > 0),
                                         float(held[k])))
        return events

    def tick(self, now_ns: int) -> list[AlertEvent]:
        """Time passes without data: conditions that keep holding raise when their time is up."""
        self.refresh()
        return self._rules(None, now_ns)

    def flush(self) -> ReadingBatch:
        """At shutdown: emit every interval touched since its last emission, closed or not."""
        out = []
        for minutes, state in self.intervals:
            out.extend(self._interval_output(minutes, flush_intervals(state)))
        return ReadingBatch.concat(out) if out else ReadingBatch.empty()

    def alert_batch(self, events: list[AlertEvent]) -> ReadingBatch:
        """Alert events as points of the ``alert`` measurement."""
        if not events:
            return ReadingBatch.empty()
        series, ts, values = [], [], []
        for e in events:
            tags = {"site": self.s.site, "building": e.building or None, "device": e.device, "rule": e.rule}
            series += [self.registry.register("alert", tags, "active"), self.registry.register("alert", tags, "value")]
            ts += [e.ts_ns, e.ts_ns]
            values += [1.0 if e.raised else 0.0, e.value]
        self.counters["alerts"] += len(events)
        return ReadingBatch.from_arrays(series, ts, values)
