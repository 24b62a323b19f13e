"""Energy meters on Modbus TCP (and, through the same model, RTU): values computed per request.

Each request runs the pymodbus SimDevice ``action`` hook, which writes the meter's present values
into the registers being read. Addresses the profile does not define answer with ILLEGAL DATA
ADDRESS, as a strict meter does, so a gateway that reads across gaps is caught.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.faults import MeterFault, apply_faults
from firmware_sim.loads import LoadModel, _hash01
from firmware_sim.register_map import RegisterMap

FUNCTION_OF_CODE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_TUPLE_INDEX = {"coil": 0, "discrete": 1, "holding": 2, "input": 3}

ServedLog = Callable[[dict], None]


@dataclass
class SimMeter:
    device: str
    unit_id: int
    register_map: RegisterMap
    load: LoadModel
    start_kwh: float = 0.0
    phases: int = 0  # 1 or 3; 0: as the register map says (a map with voltage_l1 is a three-phase meter)
    clock_ns: Callable[[], int] = time.time_ns
    faults: list[MeterFault] = field(default_factory=list)
    _import_kwh: float = field(default=0.0, init=False)
    _last_t_s: float | None = field(default=None, init=False)
    _first_t_s: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._import_kwh = self.start_kwh
        if not self.phases:
            fields = {r.field for r in self.register_map.registers}
            self.phases = 3 if "voltage_l1" in fields else 1

    def served_at(self, t_s: float) -> dict[str, float] | None:
        """What the meter answers at ``t_s``, faults included (None: it does not answer)."""
        v = self.values_at(t_s)
        if not self.faults:
            return v
        return apply_faults(self.faults, v, t_s, self._healthy_energy_at)

    def _healthy_energy_at(self, t_s: float) -> float:
        first = self._first_t_s if self._first_t_s is not None else t_s
        return self.start_kwh + self.load.energy_kwh(first, t_s, step_s=60.0)

    def values_at(self, t_s: float) -> dict[str, float]:
        if self._last_t_s is None:
            self._last_t_s = t_s
            self._first_t_s = t_s
        elif t_s > self._last_t_s:  # counters only move forward, integrated since the last request
            self._import_kwh += self.load.energy_kwh(self._last_t_s, t_s, step_s=60.0)
            self._last_t_s = t_s
        p = self.load.power_w(t_s)
        u = _hash01(self.device, 2)
        pf = 0.93 + 0.05 * u
        v = {
            "frequency": 50.0 + 0.03 * math.sin(t_s / 17.0),
            "active_power": p,
            "apparent_power": p / pf,
            "reactive_power": p * math.tan(math.acos(pf)),
            "power_factor": pf,
            "energy_import": self._import_kwh,
            "energy_export": 0.0,
            "energy_total": self._import_kwh,
        }
        if self.phases == 3:
            split = (0.36, 0.33, 0.31)
            for i, ph in enumerate(("l1", "l2", "l3")):
                volts = 229.0 + 2.5 * math.sin(t_s / 60.0 + i) + 1.5 * u
                v[f"voltage_{ph}"] = volts
                v[f"active_power_{ph}"] = p * split[i]
                v[f"current_{ph}"] = p * split[i] / (volts * pf)
        else:
            volts = 229.0 + 2.5 * math.sin(t_s / 60.0) + 1.5 * u
            v["voltage"] = volts
            v["current"] = p / (volts * pf)
        return v


class MeterBank:
    """Builds the SimDevices of many meters for one Modbus server (one TCP port or serial line)."""

    def __init__(self, meters: list[SimMeter], served_log: ServedLog | None = None) -> None:
        self.meters = meters
        self.served_log = served_log
        self.requests = 0

    def sim_devices(self) -> list[SimDevice]:
        devices = []
        for m in self.meters:
            blocks: tuple[list, list, list, list] = ([], [], [], [])
            for r in m.register_map.registers:
                dtype = DataType.BITS if r.type == "bit" else DataType.REGISTERS
                values = [False] if r.type == "bit" else [0] * r.width
                blocks[_TUPLE_INDEX[r.function]].append(SimData(r.address, values=values, datatype=dtype))
            for i in range(4):  # pymodbus wants every table present; an unused one is one invalid address
                if not blocks[i]:
                    blocks[i].append(SimData(0, datatype=DataType.BITS if i < 2 else DataType.INVALID))
            devices.append(SimDevice(m.unit_id, simdata=blocks, action=functools.partial(self._serve, m)))
        return devices

    async def _serve(self, meter: SimMeter, function_code: int, start_address: int, address: int,
                     count: int, registers: list[int], set_values) -> None:
        if set_values is not None:
            return None
        self.requests += 1
        function = FUNCTION_OF_CODE.get(function_code)
        t_ns = meter.clock_ns()
        values = meter.served_at(t_ns / 1e9)
        if values is None:  # offline: what an RS-485-to-TCP gateway answers for a silent meter
            if self.served_log is not None:
                self.served_log({"t_ns": t_ns, "kind": "modbus", "device": meter.device, "unit_id": meter.unit_id,
                                 "function": function, "address": address, "count": count, "offline": True})
            return ExcCodes.GATEWAY_NO_RESPONSE
        served = {}
        for r in meter.register_map.registers:
            if r.function != function or r.address + r.width <= address or r.address >= address + count:
                continue
            words = r.encode(values.get(r.field, 0.0))
            off = r.address - start_address
            registers[off:off + r.width] = words
            served[r.field] = r.served_value(values.get(r.field, 0.0))
        if self.served_log is not None and served:
            self.served_log({"t_ns": t_ns, "kind": "modbus", "device": meter.device, "unit_id": meter.unit_id,
                             "function": function, "address": address, "count": count, "values": served})
        return None


def tcp_server(bank: MeterBank, host: str, port: int) -> ModbusTcpServer:
    return ModbusTcpServer(bank.sim_devices(), address=(host, port))


def rtu_server(bank: MeterBank, port: str, baudrate: int = 9600, parity: str = "N", stopbits: int = 1,
               on_reply: Callable[[bytes], bytes] | None = None) -> ModbusSerialServer:
    """The same meters on an RS-485 line (a serial device, e.g. one end of a socat pty pair).

    ``on_reply`` sees every reply frame (unit id, PDU, CRC) before it goes on the line and returns
    what is really sent: a corrupted frame, or nothing for a meter that stays silent.
    """
    trace = None
    if on_reply is not None:
        def trace(sending: bool, packet: bytes) -> bytes:
            return on_reply(packet) if sending else packet
    return ModbusSerialServer(bank.sim_devices(), port=port, baudrate=baudrate, parity=parity,
                              stopbits=stopbits, bytesize=8, trace_packet=trace)
