"""Runs a scenario's devices under asyncio until stopped, writing what they served to a JSONL log."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import IO

import paho.mqtt.client as paho

from firmware_sim.cameras import CameraSpec, PeopleCountingCamera
from firmware_sim.elevators import ElevatorMonitor, ElevatorSpec
from firmware_sim.loads import LoadModel
from firmware_sim.modbus_meter import MeterBank, SimMeter, tcp_server
from firmware_sim.parking import ParkingSensor
from firmware_sim.register_map import load_register_map
from firmware_sim.scenario import Scenario

log = logging.getLogger("firmware_sim")


class ServedLog:
    """Every value a simulated device put on the wire, for tests that check what the gateway stored."""

    def __init__(self, path: Path | None) -> None:
        self._f: IO[str] | None = open(path, "a", encoding="utf-8") if path else None

    def __call__(self, record: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(record, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class Simulation:
    def __init__(self, scenario: Scenario, served_log: Path | None = None) -> None:
        self.scenario = scenario
        self.served = ServedLog(served_log)
        seed = scenario.sim.seed
        maps = {}
        self.meters = []
        for m in scenario.meters:
            if m.profile not in maps:
                maps[m.profile] = load_register_map(m.profile)
            self.meters.append(SimMeter(m.device, m.unit_id, maps[m.profile],
                                        LoadModel(m.kind, seed, m.device, m.scale_w), m.start_kwh))
        self.bank = MeterBank(self.meters, self.served)
        self.sensors = [ParkingSensor(p.dev_eui, p.bay, p.zone, p.heartbeat_s, p.slot_s, seed)
                        for p in scenario.parking]
        start_s = time.time()
        self.elevators = [ElevatorMonitor(ElevatorSpec(**e.model_dump()), seed, start_s) for e in scenario.elevators]
        self.cameras = [PeopleCountingCamera(CameraSpec(**c.model_dump()), seed) for c in scenario.cameras]
        self.published = 0

    async def run(self, stop: asyncio.Event) -> None:
        tasks = []
        server = None
        if self.meters:
            ep = self.scenario.modbus_tcp
            server = tcp_server(self.bank, ep.host, ep.port)
            tasks.append(asyncio.create_task(server.serve_forever(), name="modbus-tcp"))
        client = None
        if self.sensors or self.elevators or self.cameras:
            ep = self.scenario.mqtt
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"firmware-sim-{self.scenario.sim.site}")
            client.reconnect_delay_set(1, 10)
            client.connect_async(ep.host, ep.port, keepalive=30)
            client.loop_start()
            if self.sensors:
                tasks.append(asyncio.create_task(self._publish_loop(client, stop), name="parking"))
            if self.elevators or self.cameras:
                tasks.append(asyncio.create_task(self._device_loop(client), name="elevators-cameras"))
        tasks.append(asyncio.create_task(self._flush_loop(), name="flush"))
        log.info("simulation started: %d meters, %d parking sensors, %d elevators, %d cameras", len(self.meters),
                 len(self.sensors), len(self.elevators), len(self.cameras))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if server is not None:
                await server.shutdown()
            if client is not None:
                client.disconnect()
                client.loop_stop()
            self.served.close()

    async def _publish_loop(self, client: paho.Client, stop: asyncio.Event) -> None:
        tick = self.scenario.sim.tick_s
        while not client.is_connected():
            await asyncio.sleep(0.05)
        while True:
            t_ns = time.time_ns()
            for s in self.sensors:
                due = s.due(t_ns / 1e9)
                if due is None:
                    continue
                fport, obj = due
                topic, payload = s.uplink(t_ns, fport, obj)
                client.publish(topic, payload, qos=1)
                self.published += 1
                self.served({"t_ns": t_ns, "kind": "mqtt", "device": s.dev_eui, "topic": topic,
                             "values": {"occupied": 1.0 if obj["occupied"] else 0.0,
                                        **({"temperature": float(obj["temperature"])} if "temperature" in obj else {})}})
            await asyncio.sleep(tick - (time.time_ns() - t_ns) / 1e9 % tick)

    async def _device_loop(self, client: paho.Client) -> None:
        """Elevator monitors and cameras: every tick, what each of them publishes, logged as served."""
        tick = self.scenario.sim.tick_s
        while not client.is_connected():
            await asyncio.sleep(0.05)
        while True:
            t_ns = time.time_ns()
            for device in (*self.elevators, *self.cameras):
                for msg in device.poll(t_ns / 1e9):
                    client.publish(msg.topic, msg.payload(), qos=1)
                    self.published += 1
                    self.served(msg.served_record())
            await asyncio.sleep(tick - (time.time_ns() - t_ns) / 1e9 % tick)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.served.flush()
