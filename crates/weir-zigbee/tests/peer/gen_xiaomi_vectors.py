#!/usr/bin/env python3
"""Print Xiaomi/Aqara 0xFF01 attribute reports and what zha-quirks makes of them, one JSON object
per line, for weir-zigbee's quirk tests (tests/vectors/xiaomi_ff01.jsonl).

The ZCL frames are encoded with zigpy's types; the reading of each comes from zha-quirks itself:
`XiaomiCluster._interpret_attr_reports` (its tolerant parse of the report, string length off by
one included), `XiaomiCluster._parse_aqara_attributes` (the tags by model) and
`XiaomiPowerConfiguration._update_battery_percentage` (the battery curve). Each line:

    {"model": …, "frame": "<ZCL frame hex>", "zhaquirks": {<name>: <value>, …},
     "battery_half_percent": <int or null>}

zha-quirks 0.0.112 needs the zigpy of its time (not the emulator's 2.4.0), so it runs in a venv
of its own:

    python3 -m venv target/zigbee-quirks-venv
    target/zigbee-quirks-venv/bin/pip install zha-quirks==0.0.112 zigpy==0.63.5
    target/zigbee-quirks-venv/bin/python crates/weir-zigbee/tests/peer/gen_xiaomi_vectors.py \
        > crates/weir-zigbee/tests/vectors/xiaomi_ff01.jsonl
"""
import json
from types import SimpleNamespace

import zigpy.types as zt
import zigpy.zcl.foundation as f
from zhaquirks.xiaomi import XiaomiCluster, XiaomiPowerConfiguration

LUMI = 0x115F


def tlv(items):
    """Tag, ZCL type, value — the 0xFF01 string's content, encoded by zigpy."""
    out = b""
    for tag, typ, value in items:
        out += zt.uint8_t(tag).serialize() + f.TypeValue(typ, value).serialize()
    return out


def frame(tsn, content, manufacturer=None, length_error=0):
    hdr = f.ZCLHeader.general(
        tsn, f.GeneralCommand.Report_Attributes, manufacturer=manufacturer,
        direction=f.Direction.Server_to_Client,
    )
    hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
    # Attribute 0xFF01, type 0x42 (character string), length byte, the tagged values.
    rec = zt.uint16_t(0xFF01).serialize() + bytes([0x42, len(content) + length_error]) + content
    return hdr.serialize() + rec


def zhaquirks_reading(model, data):
    hdr, payload = f.ZCLHeader.deserialize(data)
    cluster = XiaomiCluster.__new__(XiaomiCluster)
    attrs = list(cluster._interpret_attr_reports(payload))[0]
    value = next(a.value.value for a in attrs if a.attrid == 0xFF01)
    fake = SimpleNamespace(endpoint=SimpleNamespace(device=SimpleNamespace(model=model)))
    parsed = XiaomiCluster._parse_aqara_attributes(fake, bytes(value))
    half = None
    if "battery_voltage_mV" in parsed:
        got = {}
        power = SimpleNamespace(
            MIN_VOLTS_MV=XiaomiPowerConfiguration.MIN_VOLTS_MV,
            MAX_VOLTS_MV=XiaomiPowerConfiguration.MAX_VOLTS_MV,
            _slope=200 / (XiaomiPowerConfiguration.MAX_VOLTS_MV - XiaomiPowerConfiguration.MIN_VOLTS_MV),
            BATTERY_PERCENTAGE_REMAINING=0x0021,
            _update_attribute=lambda a, v: got.__setitem__(a, v),
        )
        XiaomiPowerConfiguration._update_battery_percentage(power, parsed["battery_voltage_mV"])
        half = got[0x0021]
    return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in parsed.items()}, half


CASES = [
    # An Aqara temperature/humidity/pressure sensor's heartbeat (WSDCGQ11LM), LUMI's code in the
    # header: battery, device temperature, RSSI-ish counters, parent, then the measurements.
    ("lumi.weather", LUMI, 0, [
        (1, 0x21, zt.uint16_t(3005)), (4, 0x21, zt.uint16_t(0x13A8)), (5, 0x21, zt.uint16_t(34)),
        (6, 0x24, zt.uint40_t(0x0100000000)), (10, 0x21, zt.uint16_t(0)),
        (100, 0x29, zt.int16s(2150)), (101, 0x21, zt.uint16_t(5525)), (102, 0x2B, zt.int32s(100325)),
    ]),
    # The round Mi sensor (WSDCGQ01LM): no manufacturer code, device temperature, a cold room.
    ("lumi.sensor_ht", None, 0, [
        (1, 0x21, zt.uint16_t(2990)), (3, 0x28, zt.int8s(24)),
        (100, 0x29, zt.int16s(-425)), (101, 0x21, zt.uint16_t(6300)),
    ]),
    # The same with a string length one too long (zha-quirks retries with -1).
    ("lumi.sensor_ht", None, 1, [
        (1, 0x21, zt.uint16_t(3100)), (100, 0x29, zt.int16s(1999)), (101, 0x21, zt.uint16_t(4100)),
    ]),
    # A plug: on/off in tag 100 (not decoded by zha-quirks either), energy, voltage, power.
    ("lumi.plug.maeu01", LUMI, 0, [
        (100, 0x10, zt.Bool(1)), (3, 0x28, zt.int8s(35)), (149, 0x39, zt.Single(12.5)),
        (150, 0x39, zt.Single(2301.0)), (152, 0x39, zt.Single(45.5)),
    ]),
    # The motion sensor with a light sensor (RTCGQ11LM): illuminance in tag 11.
    ("lumi.sensor_motion.aq2", LUMI, 0, [
        (1, 0x21, zt.uint16_t(2900)), (3, 0x28, zt.int8s(20)), (11, 0x21, zt.uint16_t(87)),
    ]),
    # A door sensor: contact in tag 100 means nothing to zha-quirks' table; battery does.
    ("lumi.sensor_magnet.aq2", LUMI, 0, [
        (1, 0x21, zt.uint16_t(2700)), (100, 0x10, zt.Bool(1)),
    ]),
]

for i, (model, manufacturer, length_error, items) in enumerate(CASES):
    data = frame(0x40 + i, tlv(items), manufacturer, length_error)
    parsed, half = zhaquirks_reading(model, data)
    print(json.dumps({"model": model, "frame": data.hex(), "zhaquirks": parsed, "battery_half_percent": half}))
