"""The simulator's greenhouse climate (crates/weir-sim's module doc, same formulas and defaults),
with the greenhouse example's vent rule and the faults the simulator injects.

Faults (`fault=`, from `fault_start_h` for `fault_hours`):
  stuck_vent   the vent reports what the rule asks but does not move (no cooling, no drier air)
  heater       heater failure: the night temperature falls 6 °C below normal
  drift        the temperature sensor drifts by +1.5 °C per hour
  spikes       every 7th temperature sample jumps by +8 °C
"""
import math

import numpy as np

INPUTS = ["temperature", "humidity", "light", "vent"]
WINDOW = 8
PERIOD_S = 60
NIGHT_C, NOON_C, VENT_COOLING_C = 10.0, 30.0, 1.5


def simulate(days=1, seed=0, start_day=0, fault=None, fault_start_h=0.0, fault_hours=0.0):
    """One row per PERIOD_S: temperature, humidity, light, vent (0/1); and a fault flag."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / PERIOD_S)
    rows, flags = [], []
    vent = False
    for i in range(n):
        t_h = i * PERIOD_S / 3600.0
        phase = (t_h / 24.0) % 1.0
        sun = math.sin(2 * math.pi * (phase - 0.25))
        on = fault is not None and fault_start_h <= t_h < fault_start_h + fault_hours
        noise = rng.uniform(-1, 1, 3)
        works = vent and not (on and fault == "stuck_vent")
        temp = NIGHT_C + (NOON_C - NIGHT_C) * (sun + 1) / 2 - (VENT_COOLING_C if works else 0.0) + 0.2 * noise[0]
        if on and fault == "heater" and sun < 0:
            temp -= 6.0 * -sun
        if on and fault == "drift":
            temp += 1.5 * (t_h - fault_start_h)
        if on and fault == "spikes" and i % 7 == 0:
            temp += 8.0
        hum = 70.0 - 12.0 * sun + (-5.0 if works else 0.0) + 0.5 * noise[1]
        light = round(55000.0 * max(sun, 0.0) + 50.0 * noise[2])
        rows.append([temp, hum, light, 1.0 if vent else 0.0])
        flags.append(on)
        # The example's vent rule, on what the sensor says.
        if temp > 26.0:
            vent = True
        elif temp < 24.0:
            vent = False
    return np.array(rows), np.array(flags)


def windows(sim, step=1):
    rows = sim[0]
    return np.stack([rows[i : i + WINDOW].reshape(-1) for i in range(0, len(rows) - WINDOW + 1, step)])
