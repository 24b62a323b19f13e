"""ChirpStack v4 uplink events (application/<id>/device/<devEui>/event/up) from parking sensors.

The device profile's codec has already decoded the payload into ``object`` (for example
``{"type": "parking status", "occupied": true}``); rxInfo gives link health. Device tags set in
ChirpStack (``bay``, ``zone``) become our tags, so a fire-lane bay is configured where the
sensor is registered.
"""
from __future__ import annotations

from drivers.mqtt.decoded import (
    DEFAULT_CLOCK,
    ClockWindow,
    DecodedReading,
    DecodeResult,
    checked_time,
    load_json_object,
    number,
    short_text,
)


def decode_parking_uplink(topic: str, payload: bytes, site: str, now_ns: int,
                          clock: ClockWindow = DEFAULT_CLOCK) -> DecodeResult:
    """One uplink event to a parking_bay reading; ``time`` is the network server's, checked against ours."""
    result = DecodeResult()
    doc = load_json_object(payload, result)
    if doc is None:
        return result
    info = doc.get("deviceInfo") if isinstance(doc.get("deviceInfo"), dict) else {}
    dev_eui = short_text(info.get("devEui"))
    if dev_eui is None:
        parts = topic.split("/")
        dev_eui = short_text(parts[3]) if len(parts) >= 5 and parts[2] == "device" else None
    if dev_eui is None:
        result.problem("missing_device", "no deviceInfo.devEui and no devEui in the topic")
        return result
    result.device = dev_eui
    tags_in = info.get("tags") if isinstance(info.get("tags"), dict) else {}
    tags = {
        "site": site,
        "device": dev_eui,
        "bay": short_text(tags_in.get("bay")) or short_text(info.get("deviceName")) or dev_eui,
        "zone": short_text(tags_in.get("zone")) or "general",
    }
    ts_ns = now_ns
    if "time" in doc:
        checked = checked_time(doc["time"], "rfc3339", now_ns, clock, result)
        if checked is None:
            return result
        ts_ns = checked
    fields: dict[str, float] = {}
    obj = doc.get("object")
    if not isinstance(obj, dict):
        result.problem("no_decoded_object", "uplink has no 'object': is a codec set on the device profile?")
    else:
        occ = obj.get("occupied")
        if isinstance(occ, bool) or occ in (0, 1):
            fields["occupied"] = float(bool(occ))
        elif occ is not None:
            result.problem("wrong_type", f"object.occupied is {occ!r}, expected a boolean")
        temp = obj.get("temperature")
        if isinstance(temp, (int, float)) and not isinstance(temp, bool):
            if -60.0 <= temp <= 100.0:  # also false for NaN
                fields["temperature"] = float(temp)
            else:
                result.problem("out_of_range", f"object.temperature {temp} outside -60..100 °C")
        elif temp is not None:
            result.problem("wrong_type", f"object.temperature is {temp!r}, expected a number")
    rx = doc.get("rxInfo")
    if isinstance(rx, list):
        best_rssi, best_snr = None, None
        for g in rx:
            rssi = number(g.get("rssi")) if isinstance(g, dict) else None
            if rssi is not None and (best_rssi is None or rssi > best_rssi):
                best_rssi, best_snr = rssi, number(g.get("snr"))
        if best_rssi is not None:
            fields["rssi"] = best_rssi
            if best_snr is not None:
                fields["snr"] = best_snr
    if fields:
        result.readings.append(DecodedReading("parking_bay", tags, ts_ns, fields))
    return result
