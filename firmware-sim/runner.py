"""Runs a scenario's devices under asyncio until stopped, on the simulated clock.

* Modbus TCP meters: one pymodbus server per port (247 unit ids each), values computed per request.
* Modbus RTU and DL/T 645 meters: on RS-485 lines the simulator makes itself (socat pty pairs).
* Parking sensors, elevator monitors and cameras: published on MQTT when each one is due, in
  simulated time: a heap of next-due times, so a quiet device costs nothing between its messages
  and an accelerated run publishes at the simulated rates (a 300 s heartbeat at ``--speed 60``
  is every 5 wall seconds).
* Faults from the scenario, applied where they happen (meter model, serial line, MQTT publisher,
  lift plan, sensor, camera) and written to the ground-truth file before the run starts.
* The clock file (the gateway follows it), the served log (every value put on the wire) and
  counters (requests and messages served, CPU, how late the MQTT devices ran).
"""
from __future__ import annotations

import asyncio
import heapq
import json
import logging
import random
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import IO, Callable, Protocol

import paho.mqtt.client as paho

from firmware_sim import dlt645_meter
from firmware_sim.cameras import CameraSpec, Crowd, PeopleCountingCamera
from firmware_sim.clock import SimClock
from firmware_sim.elevators import FORCED_KINDS, ElevatorMonitor, ElevatorSpec, ForcedFault
from firmware_sim.faults import LINE_KINDS, METER_KINDS, Fault, MeterFault, write_ground_truth
from firmware_sim.loads import LoadModel
from firmware_sim.modbus_meter import MeterBank, SimMeter, rtu_server, tcp_server
from firmware_sim.parking import ParkingSensor
from firmware_sim.register_map import RegisterMap, load_register_map
from firmware_sim.scenario import PlacedMeter, Scenario, start_time_s
from firmware_sim.serial_link import PtyPair

log = logging.getLogger("firmware_sim")

GATEWAY_NO_RESPONSE = 0x0B  # the exception a Modbus gateway answers for a meter that is silent
DI_FIELD = {di: (field, factor) for field, (di, factor) in dlt645_meter.FIELD_DI.items()}
FAN_OUT_BEFORE_YIELD = 200  # MQTT devices fired before letting the Modbus servers answer
LATE_S = 0.1  # an MQTT device that fires later than this (wall) after it was due counts as late


class ServedLog:
    """Every value a simulated device put on the wire, for tests that check what the gateway stored."""

    def __init__(self, path: Path | None) -> None:
        self._f: IO[str] | None = open(path, "a", encoding="utf-8") if path else None

    def __call__(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record, separators=(",", ":")) + "\n")

    @property
    def enabled(self) -> bool:
        return self._f is not None

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class FaultSchedule:
    """The scenario's faults by device, in simulated time."""

    def __init__(self, faults: list[Fault]) -> None:
        self.faults = faults
        self._by_device: dict[str, list[Fault]] = defaultdict(list)
        for f in faults:
            self._by_device[f.device].append(f)

    def of(self, device: str, kinds: tuple[str, ...]) -> list[Fault]:
        return [f for f in self._by_device.get(device, ()) if f.kind in kinds]

    def active(self, device: str, t_s: float, kinds: tuple[str, ...]) -> Fault | None:
        for f in self._by_device.get(device, ()):
            if f.kind in kinds and f.active(t_s):
                return f
        return None


class MqttDevice(Protocol):
    device: str

    def fire(self, t_s: float, skew_ms: int) -> list[tuple[str, bytes, dict]]:
        """(topic, payload, served record) of what the device publishes at t, its clock ``skew_ms`` off."""

    def next_due(self, t_s: float) -> float:
        """When the device may next have something to publish, after firing at t."""

    def first_due(self, t_s: float) -> float:
        """When the device first publishes, the broker being reachable from t."""


class ParkingDevice:
    def __init__(self, sensor: ParkingSensor) -> None:
        self.sensor = sensor
        self.device = sensor.dev_eui

    def fire(self, t_s: float, skew_ms: int) -> list[tuple[str, bytes, dict]]:
        due = self.sensor.due(t_s)
        if due is None:
            return []
        fport, obj = due
        t_ns = int(t_s * 1e9) + skew_ms * 1_000_000
        topic, payload = self.sensor.uplink(t_ns, fport, obj)
        values = {"occupied": 1.0 if obj["occupied"] else 0.0}
        if "temperature" in obj:
            values["temperature"] = float(obj["temperature"])
        record = {"t_ns": t_ns, "kind": "mqtt", "device": self.device, "topic": topic, "measurement": "parking_bay",
                  "tags": {"bay": self.sensor.bay, "zone": self.sensor.zone}, "values": values}
        return [(topic, payload, record)]

    def next_due(self, t_s: float) -> float:
        return self.sensor.next_check_s(t_s)

    def first_due(self, t_s: float) -> float:
        return t_s + self.sensor.boot_delay_s()


class ElevatorDevice:
    def __init__(self, monitor: ElevatorMonitor, tick_s: float) -> None:
        self.monitor = monitor
        self.device = monitor.spec.elevator_id
        self.tick_s = tick_s

    def fire(self, t_s: float, skew_ms: int) -> list[tuple[str, bytes, dict]]:
        msgs = self.monitor.poll(t_s)
        if skew_ms:
            msgs = [m.restamped(skew_ms) for m in msgs]
        return [(m.topic, m.payload(), m.served_record()) for m in msgs]

    def next_due(self, t_s: float) -> float:
        return self.monitor.next_poll_s(t_s, self.tick_s)

    def first_due(self, t_s: float) -> float:
        return t_s


class CameraDevice:
    def __init__(self, camera: PeopleCountingCamera) -> None:
        self.camera = camera
        self.device = camera.spec.device

    def fire(self, t_s: float, skew_ms: int) -> list[tuple[str, bytes, dict]]:
        msgs = self.camera.poll(t_s)
        if skew_ms:
            msgs = [m.restamped(skew_ms) for m in msgs]
        return [(m.topic, m.payload(), m.served_record()) for m in msgs]

    def next_due(self, t_s: float) -> float:
        return self.camera.next_report_s(t_s)

    def first_due(self, t_s: float) -> float:
        return t_s


class Simulation:
    """A scenario's devices, servers and lines; ``run`` serves them until ``stop`` is set."""

    def __init__(self, scenario: Scenario, served_log: Path | None = None, *, speed: float | None = None,
                 start_s: float | None = None, sim_dir: Path | str | None = None,
                 ground_truth: Path | None = None, stats_path: Path | None = None) -> None:
        self.scenario = scenario
        self.served = ServedLog(served_log)
        self.speed = speed if speed is not None else scenario.sim.speed
        # an explicit start is the first instant served; "now" is the wall clock, which at speed 1
        # keeps device time equal to a gateway's system clock
        self.explicit_start = start_s is not None or scenario.sim.start is not None
        now_ns = time.time_ns()
        self.start_s = start_s if start_s is not None else start_time_s(scenario, now_ns / 1e9)
        self.clock = SimClock(int(self.start_s * 1e9), self.speed, wall_ns=now_ns)
        self.sim_dir = scenario.sim_dir(sim_dir)
        # written only when they mean something, so a plain run leaves nothing behind: the clock file
        # when device time is not the wall clock (or the scenario asks for it), the ground truth when
        # there are faults (or a file is named)
        follows = self.speed != 1.0 or self.explicit_start or scenario.sim.clock_file
        self.clock_path = self.sim_dir / "clock.json" if follows else None
        self.ground_truth_path = ground_truth or (self.sim_dir / "ground-truth.jsonl" if scenario.faults else None)
        self.stats_path = stats_path
        seed = scenario.sim.seed
        self.schedule = FaultSchedule([Fault(f.device, f.kind, f.start_s(self.start_s), f.duration_s, f.magnitude_value)
                                       for f in scenario.faults])
        self._rng = random.Random(seed)
        self.device_types = scenario.device_types()

        # meters: one model per meter, grouped by where it is served
        maps: dict[str, RegisterMap] = {}
        self.tcp_banks: dict[tuple[str, int], list[SimMeter]] = defaultdict(list)
        self.rtu_banks: dict[str, list[SimMeter]] = defaultdict(list)
        self.dlt_meters: dict[str, list[dlt645_meter.SimMeter]] = defaultdict(list)
        self.meter_models: dict[str, SimMeter] = {}
        for pm in scenario.all_meters():
            self._add_meter(pm, maps, seed)

        # MQTT devices
        self.sensors = []
        for p in scenario.all_parking():
            s = ParkingSensor(p.dev_eui, p.bay, p.zone, p.heartbeat_s, p.slot_s, seed)
            s.parked = [(f.start_s, f.end_s) for f in self.schedule.of(p.dev_eui, ("fire_lane",))]
            self.sensors.append(s)
        self.elevators = []
        self.forced: dict[int, ForcedFault] = {}  # index in schedule.faults -> the lift's forced fault
        for e in scenario.all_elevators():
            forced = []
            for k, f in enumerate(self.schedule.faults):
                if f.device == e.elevator_id and f.kind in FORCED_KINDS:
                    self.forced[k] = ForcedFault(f.kind, f.start_s, f.duration_s)
                    forced.append(self.forced[k])
            spec = ElevatorSpec(elevator_id=e.elevator_id, building=e.building, **e.spec_fields())
            self.elevators.append(ElevatorMonitor(spec, seed, self.start_s, tuple(forced)))
        self.cameras = []
        for c in scenario.cameras:
            crowds = tuple(Crowd(f.start_s, f.end_s, f.magnitude) for f in self.schedule.of(c.device, ("crowding",)))
            camera = PeopleCountingCamera(CameraSpec(**c.model_dump()), seed, crowds)
            camera.totals_at(self.start_s)  # count the day so far now, not in the first report's time slot
            self.cameras.append(camera)
        tick = scenario.sim.tick_s
        self.mqtt_devices: list[MqttDevice] = [*(ParkingDevice(s) for s in self.sensors),
                                               *(ElevatorDevice(m, tick) for m in self.elevators),
                                               *(CameraDevice(c) for c in self.cameras)]
        self.published = 0
        self.mqtt_lag_max_s = 0.0  # wall seconds an MQTT device fired after it was due, at worst
        self.mqtt_fired = 0
        self.mqtt_late = 0  # fired more than LATE_S after they were due
        self.banks: dict[str, list[MeterBank]] = {"modbus_tcp": [], "modbus_rtu": []}
        self.dlt_lines: list[dlt645_meter.MeterLine] = []
        self.line_faults = 0  # replies corrupted or suppressed on serial lines
        self._wall0 = time.monotonic()
        self._cpu0 = self._cpu_s()

    # construction ------------------------------------------------------------------------------
    def _add_meter(self, pm: PlacedMeter, maps: dict[str, RegisterMap], seed: int) -> None:
        m = pm.meter
        faults = [MeterFault(f.device, f.kind, f.start_s, f.duration_s, f.magnitude)
                  for f in self.schedule.of(m.device, METER_KINDS)]
        if pm.protocol == "dlt645":
            # three phases: every field of the gateway's default DL/T 645 set (voltage_l1..l3...) has a value
            rmap, phases = RegisterMap("dlt645", ()), 3
        else:
            if m.profile not in maps:
                maps[m.profile] = load_register_map(m.profile)
            rmap, phases = maps[m.profile], 0
        model = SimMeter(m.device, m.unit_id or 0, rmap, LoadModel(m.kind, seed, m.device, m.scale_w), m.start_kwh,
                         phases=phases, clock_ns=self.clock.now_ns, faults=faults)
        self.meter_models[m.device] = model
        if pm.protocol == "modbus_tcp":
            self.tcp_banks[(pm.host, pm.port)].append(model)
        elif pm.protocol == "modbus_rtu":
            self.rtu_banks[pm.bus].append(model)
        else:
            self.dlt_meters[pm.bus].append(dlt645_meter.SimMeter(
                m.address, self._dlt_values(model), served_log=self.served if self.served.enabled else None,
                clock_ns=self.clock.now_ns, device=m.device, line_fault=self._dlt_line_fault(model)))

    def _dlt_values(self, model: SimMeter) -> Callable[[int], float | None]:
        def value(di: int) -> float | None:
            served = model.served_at(self.clock.now_s())
            if served is None or di not in DI_FIELD:
                return None
            field, factor = DI_FIELD[di]
            return served[field] * factor if field in served else None
        return value

    def _dlt_line_fault(self, model: SimMeter) -> Callable[[int], str | None]:
        def fault(t_ns: int) -> str | None:
            t_s = t_ns / 1e9
            kind = "offline" if any(f.kind == "offline" and f.active(t_s) for f in model.faults) else None
            if kind is None:
                f = self.schedule.active(model.device, t_s, LINE_KINDS)
                kind = f.kind if f is not None else None
            self.line_faults += kind is not None
            return kind
        return fault

    def _rtu_reply_hook(self, meters: list[SimMeter]) -> Callable[[bytes], bytes]:
        by_unit = {m.unit_id: m for m in meters}

        def on_reply(packet: bytes) -> bytes:
            meter = by_unit.get(packet[0]) if packet else None
            if meter is None or len(packet) < 5:
                return packet
            if packet[1] & 0x80 and packet[2] == GATEWAY_NO_RESPONSE:
                self.line_faults += 1
                return b""  # an offline meter on RS-485 is silence, not an answer (MeterBank logged it)
            t_ns = self.clock.now_ns()
            f = self.schedule.active(meter.device, t_ns / 1e9, LINE_KINDS)
            if f is None:
                return packet
            self.line_faults += 1
            out = bytearray(packet)
            if f.kind == "crc_error":
                out[-1] ^= 0xA5  # the CRC's high byte, as a noisy line would flip it
            else:
                out[2 + self._rng.randrange(len(out) - 4)] ^= 0x10  # a byte of the PDU: the CRC no longer matches
            self.served({"t_ns": t_ns, "kind": "modbus", "device": meter.device, "unit_id": meter.unit_id,
                         "line_fault": f.kind})
            return bytes(out)
        return on_reply

    # ground truth --------------------------------------------------------------------------------
    def ground_truth(self) -> list[Fault]:
        """Every fault as the devices will really show it (a lift's forced fault where its plan put it)."""
        out = []
        monitors = {m.spec.elevator_id: m for m in self.elevators}
        for k, f in enumerate(self.schedule.faults):
            if k in self.forced:
                window = monitors[f.device].forced_window(self.forced[k])
                if window is None:
                    continue  # before the lift's day began: it never happens
                f = Fault(f.device, f.kind, window[0], window[1] - window[0], f.magnitude)
            out.append(f)
        return out

    def _truth_extra(self, f: Fault) -> dict:
        return {"device_type": self.device_types.get(f.device, "")}

    # running -------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        if self.clock_path is not None:
            self.sim_dir.mkdir(parents=True, exist_ok=True)
            if self.clock_path.exists():
                self.clock_path.unlink()  # a stale clock from an earlier run must not be followed meanwhile
        if self.ground_truth_path is not None:
            self.ground_truth_path.parent.mkdir(parents=True, exist_ok=True)
            write_ground_truth(str(self.ground_truth_path), self.ground_truth(), self._truth_extra)
        tasks: list[asyncio.Task] = []
        servers = []
        ptys: list[PtyPair] = []
        client = None
        try:
            for (host, port), meters in sorted(self.tcp_banks.items()):
                bank = MeterBank(meters, self.served if self.served.enabled else None)
                self.banks["modbus_tcp"].append(bank)
                server = tcp_server(bank, host, port)
                servers.append(server)
                tasks.append(asyncio.create_task(server.serve_forever(), name=f"modbus-tcp-{port}"))
            for line in self.scenario.serial_lines:
                device_end, gateway_end = line.links(self.sim_dir)
                if line.name not in self.rtu_banks and line.name not in self.dlt_meters:
                    continue
                ptys.append(PtyPair(device_end, gateway_end).open())
                baudrate, parity = line.serial_settings
                if line.protocol == "modbus_rtu":
                    meters = self.rtu_banks[line.name]
                    bank = MeterBank(meters, self.served if self.served.enabled else None)
                    self.banks["modbus_rtu"].append(bank)
                    server = rtu_server(bank, device_end, baudrate, parity, line.stopbits,
                                        on_reply=self._rtu_reply_hook(meters))
                    servers.append(server)
                    tasks.append(asyncio.create_task(server.serve_forever(), name=f"modbus-rtu-{line.name}"))
                else:
                    mline = dlt645_meter.MeterLine(self.dlt_meters[line.name], seed=self.scenario.sim.seed)
                    self.dlt_lines.append(mline)
                    tasks.append(asyncio.create_task(dlt645_meter.serve_serial(device_end, mline),
                                                     name=f"dlt645-{line.name}"))
            await asyncio.sleep(0.2)  # let the servers bind and the serial servers open their ports
            if self.mqtt_devices:
                ep = self.scenario.mqtt
                client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                     client_id=f"firmware-sim-{self.scenario.sim.site}-{time.time_ns() % 10**9}")
                client.reconnect_delay_set(1, 10)
                client.connect_async(ep.host, ep.port, keepalive=30)
                client.loop_start()
            # everything is listening: an explicit start begins now, and the file tells a gateway it may begin
            if self.explicit_start:
                self.clock.wall_ns = time.time_ns()
            if self.clock_path is not None:
                self.clock.write(self.clock_path)
            if client is not None:
                tasks.append(asyncio.create_task(self._mqtt_loop(client), name="mqtt-devices"))
            tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            log.info("simulation started: %d meters (%d Modbus TCP ports, %d serial lines), %d parking sensors, "
                     "%d elevators, %d cameras, %d faults; x%g from %s", len(self.meter_models), len(self.tcp_banks),
                     len(ptys), len(self.sensors), len(self.elevators), len(self.cameras), len(self.schedule.faults),
                     self.speed, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.start_s)))
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                await server.shutdown()
            if client is not None:
                client.disconnect()
                client.loop_stop()
            for p in ptys:
                p.close()
            if self.clock_path is not None and self.clock_path.exists():
                self.clock_path.unlink()  # no gateway may follow a clock nobody keeps any more
            self.served.close()
            self.write_stats()

    async def _mqtt_loop(self, client: paho.Client) -> None:
        """Fire each MQTT device when it is due, in simulated time; sleep until the next one."""
        waited = time.monotonic()
        while not client.is_connected():
            if time.monotonic() - waited > 10:
                log.warning("MQTT broker %s:%d not reachable yet", self.scenario.mqtt.host, self.scenario.mqtt.port)
                waited = time.monotonic()
            await asyncio.sleep(0.05)
        now = self.clock.now_s()
        heap = [(d.first_due(now), i, d) for i, d in enumerate(self.mqtt_devices)]
        heapq.heapify(heap)
        while heap:
            now = self.clock.now_s()
            fired = 0
            while heap and heap[0][0] <= now:
                due, i, device = heapq.heappop(heap)
                late_s = (now - due) / self.speed
                self.mqtt_lag_max_s = max(self.mqtt_lag_max_s, late_s)
                self.mqtt_fired += 1
                self.mqtt_late += late_s > LATE_S
                self._publish(client, device, due)
                heapq.heappush(heap, (device.next_due(due), i, device))
                fired += 1
                if fired % FAN_OUT_BEFORE_YIELD == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(max(0.0, min(self.clock.wall_seconds_until(heap[0][0]), 1.0)))

    def _publish(self, client: paho.Client, device: MqttDevice, t_s: float) -> None:
        fault = self.schedule.active(device.device, t_s, ("offline", "malformed_payload", "clock_skew"))
        skew_ms = round(fault.magnitude * 3_600_000) if fault is not None and fault.kind == "clock_skew" else 0
        for topic, payload, record in device.fire(t_s, skew_ms):
            true_ns = int(t_s * 1e9)
            if fault is not None and fault.kind == "offline":
                self.served({"t_ns": true_ns, "kind": "mqtt", "device": device.device, "topic": topic, "offline": True})
                continue
            if fault is not None and fault.kind == "malformed_payload":
                payload = payload[: len(payload) // 2]  # cut mid-document: not JSON any more
                record = {"t_ns": true_ns, "kind": "mqtt", "device": device.device, "topic": topic,
                          "malformed": True, "bytes": len(payload)}
            elif skew_ms:
                record = {**record, "true_t_ns": true_ns, "skew_s": skew_ms / 1000}
            client.publish(topic, payload, qos=1)
            self.published += 1
            self.served(record)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.served.flush()
            self.write_stats()

    # figures -------------------------------------------------------------------------------------
    @staticmethod
    def _cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def stats(self) -> dict:
        """What was served so far: requests per protocol, MQTT messages, CPU and wall time."""
        return {
            "wall_s": round(time.monotonic() - self._wall0, 3),
            "cpu_s": round(self._cpu_s() - self._cpu0, 3),
            "sim_time_ns": self.clock.now_ns(),
            "speed": self.speed,
            "devices": len(self.meter_models) + len(self.mqtt_devices),
            "modbus_tcp_requests": sum(b.requests for b in self.banks["modbus_tcp"]),
            "modbus_rtu_requests": sum(b.requests for b in self.banks["modbus_rtu"]),
            "dlt645_requests": sum(len(m.requests) for line in self.dlt_lines for m in line.meters),
            "mqtt_messages": self.published,
            "mqtt_lag_max_s": round(self.mqtt_lag_max_s, 4),
            "mqtt_fired": self.mqtt_fired,
            "mqtt_late": self.mqtt_late,
            "line_faults": self.line_faults,
        }

    def write_stats(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_name(self.stats_path.name + ".tmp")
        tmp.write_text(json.dumps(self.stats()), encoding="utf-8")
        tmp.replace(self.stats_path)
