#!/usr/bin/env python3
"""Evaluate the committed greenhouse autoencoder on the simulator's faults, next to a rolling
z-score baseline on the same data.

For each fault (stuck vent, heater failure, sensor drift, spikes) and each of 6 seeds: one
simulated day with the fault from 13:00 (heater: from 01:00) for 4 hours. A window is "faulty" when
any of its samples is. Each detector flags windows:
  autoencoder  reconstruction MSE of the normalised window >= RAISE, scored by the reference
               interpreter (ai-edge-litert);
  z-score      any input's newest value more than 4 standard deviations from the mean of the
               previous 30 samples of that input (std floored at 0.5 of its unit).
Printed per fault: precision and recall over windows, and the median time from the fault's start
to the first flagged window (minutes).
"""
import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from greenhouse import INPUTS, PERIOD_S, WINDOW, simulate, windows  # noqa: E402
from train import reference_interpreter  # noqa: E402

RAISE = 0.02  # above 99 % of normal windows (p99 0.0009; vent switching reaches 0.06)
FAULTS = {"stuck_vent": 13.0, "heater": 1.0, "drift": 13.0, "spikes": 13.0}


def ae_flags(it, norm, win):
    inp = it.get_input_details()[0]["index"]
    out = it.get_output_details()[0]["index"]
    mean = np.tile(norm["mean"], WINDOW)
    std = np.tile(norm["std"], WINDOW)
    flags = []
    for w in win:
        x = ((w - mean) / std).astype(np.float32)[None, :]
        it.set_tensor(inp, x)
        it.invoke()
        flags.append(float(((it.get_tensor(out) - x) ** 2).mean()) >= RAISE)
    return np.array(flags)


def z_flags(rows, n=30, k=4.0, floor=0.5):
    flags = np.zeros(len(rows), dtype=bool)
    for i in range(n, len(rows)):
        hist = rows[i - n : i]
        sd = np.maximum(hist.std(0), floor)
        flags[i] = bool((np.abs(rows[i] - hist.mean(0)) > k * sd).any())
    # per window: the flag of its newest sample
    return flags[WINDOW - 1 :]


def score(flags, truth, start_idx):
    tp = int((flags & truth).sum())
    fp = int((flags & ~truth).sum())
    fn = int((~flags & truth).sum())
    hit = np.nonzero(flags & truth)[0]
    ttd = (hit[0] + WINDOW - 1 - start_idx) * PERIOD_S / 60 if len(hit) else None
    return tp, fp, fn, ttd


def main():
    norm = json.loads((ROOT / "models/greenhouse-ae.norm.json").read_text())
    assert norm["inputs"] == INPUTS
    it = reference_interpreter(ROOT / "models/greenhouse-ae.tflite")
    print(f"{'fault':<11} {'detector':<11} {'precision':>9} {'recall':>7} {'time to detect (median)':>24}")
    for fault, start_h in FAULTS.items():
        totals = {"autoencoder": [0, 0, 0, []], "z-score": [0, 0, 0, []]}
        for seed in range(100, 106):
            rows, on = simulate(days=1, seed=seed, fault=fault, fault_start_h=start_h, fault_hours=4)
            win = windows((rows, on))
            truth = np.array([on[i : i + WINDOW].any() for i in range(len(win))])
            start_idx = int(start_h * 3600 / PERIOD_S)
            for name, flags in (("autoencoder", ae_flags(it, norm, win)), ("z-score", z_flags(rows))):
                tp, fp, fn, ttd = score(flags, truth, start_idx)
                t = totals[name]
                t[0] += tp
                t[1] += fp
                t[2] += fn
                if ttd is not None:
                    t[3].append(ttd)
        for name, (tp, fp, fn, ttds) in totals.items():
            prec = tp / (tp + fp) if tp + fp else float("nan")
            rec = tp / (tp + fn) if tp + fn else float("nan")
            ttd = f"{np.median(ttds):.0f} min ({len(ttds)}/6 detected)" if ttds else "never"
            print(f"{fault:<11} {name:<11} {prec:>9.2f} {rec:>7.2f} {ttd:>24}")
    # No fault: false alarms per day.
    for name in ("autoencoder", "z-score"):
        fa = 0
        for seed in range(200, 206):
            rows, on = simulate(days=1, seed=seed)
            win = windows((rows, on))
            flags = ae_flags(it, norm, win) if name == "autoencoder" else z_flags(rows)
            fa += int(flags.sum())
        print(f"{'none':<11} {name:<11} flagged windows per normal day: {fa / 6:.1f}")


if __name__ == "__main__":
    main()
