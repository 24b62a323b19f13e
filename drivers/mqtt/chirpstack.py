"""ChirpStack v4 uplink events (application/<id>/device/<devEui>/event/up) from parking sensors.

The device profile's codec has already decoded the payload into ``object`` (for example
``{"type": "parking status", "occupied": true}``); rxInfo gives link health. Device tags set in
ChirpStack (``bay``, ``zone``) become our tags, so a fire-lane bay is configured where the
sensor is registered.
"""
from __future__ import annotations

import json

from drivers.mqtt.decoded import DecodedReading, DecodeResult, parse_rfc3339_ns


def decode_parking_uplink(topic: str, payload: bytes, site: str, now_ns: int) -> DecodeResult:
    result = DecodeResult()
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        result.problems.append(("malformed_json", str(e)[:200]))
        return result
    if not isinstance(doc, dict):
        result.problems.append(("malformed_json", "uplink is not a JSON object"))
        return result
    info = doc.get("deviceInfo") if isinstance(doc.get("deviceInfo"), dict) else {}
    dev_eui = info.get("devEui")
    if not isinstance(dev_eui, str) or not dev_eui:
        parts = topic.split("/")
        dev_eui = parts[3] if len(parts) >= 5 and parts[2] == "device" else ""
    if not dev_eui:
        result.problems.append(("missing_device", "no deviceInfo.devEui and no devEui in the topic"))
        return result
    result.device = dev_eui
    tags_in = info.get("tags") if isinstance(info.get("tags"), dict) else {}
    tags = {
        "site": site,
        "device": dev_eui,
        "bay": str(tags_in.get("bay") or info.get("deviceName") or dev_eui),
        "zone": str(tags_in.get("zone") or "general"),
    }
    ts_ns = now_ns
    if "time" in doc:
        try:
            ts_ns = parse_rfc3339_ns(str(doc["time"]))
        except ValueError as e:
            result.problems.append(("bad_timestamp", str(e)))
            return result
    fields: dict[str, float] = {}
    obj = doc.get("object")
    if not isinstance(obj, dict):
        result.problems.append(("no_decoded_object", "uplink has no 'object': is a codec set on the device profile?"))
    else:
        occ = obj.get("occupied")
        if isinstance(occ, bool) or occ in (0, 1):
            fields["occupied"] = float(bool(occ))
        elif occ is not None:
            result.problems.append(("wrong_type", f"object.occupied is {occ!r}, expected a boolean"))
        temp = obj.get("temperature")
        if isinstance(temp, (int, float)) and not isinstance(temp, bool):
            if -60.0 <= temp <= 100.0:
                fields["temperature"] = float(temp)
            else:
                result.problems.append(("out_of_range", f"object.temperature {temp} outside -60..100 °C"))
        elif temp is not None:
            result.problems.append(("wrong_type", f"object.temperature is {temp!r}, expected a number"))
    rx = doc.get("rxInfo")
    if isinstance(rx, list):
        best = None
        for g in rx:
            if isinstance(g, dict) and isinstance(g.get("rssi"), (int, float)):
                if best is None or g["rssi"] > best["rssi"]:
                    best = g
        if best is not None:
            fields["rssi"] = float(best["rssi"])
            if isinstance(best.get("snr"), (int, float)):
                fields["snr"] = float(best["snr"])
    if fields:
        result.readings.append(DecodedReading("parking_bay", tags, ts_ns, fields))
    return result
