#!/usr/bin/env python3
"""Check Home Assistant MQTT discovery messages with Home Assistant's own code (PyPI
`homeassistant` 2024.3.3, scripts/lib.sh `need_home_assistant`).

Reads JSON lines `{"topic": ..., "payload": ...}` (payload as text; empty = removal) on stdin and
prints one JSON line per message:

    {"topic": ..., "ok": true, "component": "sensor", "config": {...validated...},
     "rendered": {"good": "...", "bad": "..."}}
    {"topic": ..., "ok": false, "error": "..."}

What is checked, as HA's discovery (homeassistant/components/mqtt/discovery.py) does it:
the topic against its TOPIC_MATCHER and SUPPORTED_COMPONENTS, the origin block against
MQTT_ORIGIN_INFO_SCHEMA, the payload against the platform's DISCOVERY_SCHEMA (which silently drops
unknown keys: a dropped key is reported as an error here), and for sensors the unit against
HA's DEVICE_CLASS_UNITS and the state class against DEVICE_CLASS_STATE_CLASSES (HA warns at run
time otherwise). `value_template`s are rendered with Jinja2 (HA's template language) for a good
and a bad reading of the JSON format.

    ha_discovery_check.py DISCOVERY_PREFIX
"""
import importlib
import json
import sys

import jinja2
from homeassistant.components.mqtt import discovery
from homeassistant.components.sensor import DEVICE_CLASS_STATE_CLASSES, DEVICE_CLASS_UNITS

SAMPLES = {
    "good": {"value": 21.5, "unit": "x", "ts": "2026-12-01T00:00:00Z", "quality": "good", "seq": 1},
    "bad": {"value": 0, "ts": "2026-12-01T00:00:00Z", "quality": "bad", "reason": "timeout", "seq": 2},
    "true": {"value": True, "ts": "2026-12-01T00:00:00Z", "quality": "good", "seq": 3},
}


def plain(v):
    """The validated config as JSON (enums, templates and device classes as strings)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (bool, int, float)) or v is None:
        return v
    if hasattr(v, "template"):
        return v.template
    if hasattr(v, "value"):
        return v.value
    return str(v)


def check(prefix, topic, text):
    if not topic.startswith(prefix + "/"):
        raise ValueError(f"not under the discovery prefix {prefix}")
    match = discovery.TOPIC_MATCHER.match(topic[len(prefix) + 1:])
    if not match:
        raise ValueError("topic does not match HA's discovery topic pattern")
    component, _node_id, _object_id = match.groups()
    if component not in discovery.SUPPORTED_COMPONENTS:
        raise ValueError(f"component {component} not supported")
    if not text:
        return {"component": component, "config": None}
    payload = json.loads(text)
    if "origin" in payload:
        discovery.MQTT_ORIGIN_INFO_SCHEMA(payload["origin"])
    module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
    validated = module.DISCOVERY_SCHEMA(dict(payload))
    dropped = sorted(set(payload) - set(validated))
    if dropped:
        raise ValueError(f"keys HA does not know for {component} (dropped): {dropped}")
    dclass = validated.get("device_class")
    if component == "sensor" and dclass is not None:
        unit = validated.get("unit_of_measurement")
        units = DEVICE_CLASS_UNITS.get(dclass)
        if units is not None and unit not in units:
            raise ValueError(f"unit {unit!r} is not one HA accepts for {dclass}: {sorted(map(str, units))}")
        sc = validated.get("state_class")
        allowed = DEVICE_CLASS_STATE_CLASSES.get(dclass)
        if sc is not None and allowed is not None and sc not in allowed:
            raise ValueError(f"state_class {sc} is not allowed for {dclass}")
    out = {"component": component, "config": plain(validated)}
    tpl = payload.get("value_template")
    if tpl:
        t = jinja2.Environment().from_string(tpl)
        out["rendered"] = {k: t.render(value_json=v) for k, v in SAMPLES.items()}
    return out


def main():
    prefix = sys.argv[1]
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        try:
            res = {"topic": msg["topic"], "ok": True, **check(prefix, msg["topic"], msg["payload"])}
        except Exception as e:  # every failure is reported, not raised
            res = {"topic": msg["topic"], "ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
