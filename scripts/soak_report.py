#!/usr/bin/env python3
"""Helpers of scripts/soak (standard library only).

    soak_report.py check STATE.json          read `mosquitto_sub -v` lines on stdin, account for every
                                             `seq` per device and series; STATE.json rewritten every 2 s
    soak_report.py idle STATE.json SECONDS   exit 0 when no message arrived for SECONDS
    soak_report.py report OUT STATE.json MINUTES
                                             OUT/soak.csv + OUT/events.csv + STATE.json ->
                                             OUT/soak.svg and OUT/summary.md

Series: a telemetry topic `soak/<device>/<point>` counts under its device (one `seq` per device
across its points, as the JSON format numbers them); `soak/alerts/<device>/<name>` under
`alerts:<device>`; `…/set/result` under `result:<device>`; `soak/status…` is not numbered.
A seq above the highest seen + 1 opens a gap; a gap is closed if its seq arrives later (a replay
after a reconnect); a seq seen before is a duplicate (at-least-once delivery).
"""
import json
import os
import signal
import sys
import time


def series_of(topic):
    parts = topic.split("/")
    if len(parts) < 3 or parts[1] == "status":
        return None
    if parts[1] == "alerts":
        return "alerts:" + "/".join(parts[2:-1])
    if parts[-2:] == ["set", "result"]:
        return "result:" + "/".join(parts[1:-3])
    return "/".join(parts[1:-1])


def check(state_path):
    series = {}  # key -> [max, count, dups, set(missing)]
    stats = {"messages": 0, "unnumbered": 0, "last_message": 0.0}

    def dump():
        missing = {k: sorted(v[3]) for k, v in series.items() if v[3]}
        doc = {
            "messages": stats["messages"],
            "unnumbered": stats["unnumbered"],
            "last_message": stats["last_message"],
            "series": len(series),
            "duplicates": sum(v[2] for v in series.values()),
            "gaps": sum(len(v[3]) for v in series.values()),
            "missing": {k: v[:20] for k, v in missing.items()},
            "numbered": sum(v[1] for v in series.values()),
        }
        tmp = state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, state_path)

    def on_term(*_):
        dump()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    next_dump = time.time() + 2
    for line in sys.stdin:
        stats["messages"] += 1
        stats["last_message"] = time.time()
        topic, _, payload = line.rstrip("\n").partition(" ")
        key = series_of(topic)
        seq = None
        if key is not None:
            try:
                doc = json.loads(payload)
                seq = doc.get("seq") if isinstance(doc, dict) else None
            except ValueError:
                seq = None
        if not isinstance(seq, int):
            stats["unnumbered"] += 1
        else:
            s = series.get(key)
            if s is None:
                series[key] = [seq, 1, 0, set()]
            else:
                s[1] += 1
                if seq > s[0]:
                    s[3].update(range(s[0] + 1, seq))
                    s[0] = seq
                elif seq in s[3]:
                    s[3].discard(seq)
                else:
                    s[2] += 1
        if time.time() >= next_dump:
            dump()
            next_dump = time.time() + 2
    dump()


def idle(state_path, seconds):
    try:
        with open(state_path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return 1
    return 0 if time.time() - doc.get("last_message", 0) >= seconds else 1


def read_csv(path):
    with open(path) as f:
        head = f.readline().strip().split(",")
        rows = []
        for line in f:
            cells = line.strip().split(",")
            rows.append(dict(zip(head, cells)))
    return rows


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def outages(events):
    """(start, end, kind) of every broker outage."""
    out, open_ = [], None
    for t, e in events:
        if e in ("broker stopped", "broker SIGSTOP"):
            open_ = (t, "stopped" if e == "broker stopped" else "hung (SIGSTOP)")
        elif e in ("broker started", "broker SIGCONT") and open_:
            out.append((open_[0], t, open_[1]))
            open_ = None
    return out


def svg(samples, events, path):
    w, left, right = 900, 70, 20
    panels = [
        ("RSS (MiB)", [(s["t"], s["rss"] / 1024) for s in samples if s["rss"] is not None]),
        ("outbox rows", [(s["t"], s["rows"]) for s in samples if s["rows"] is not None]),
        ("open fds / threads", None),
    ]
    ph, gap, top = 170, 40, 40
    h = top + len(panels) * (ph + gap) + 20
    tmax = max(s["t"] for s in samples) or 1
    X = lambda t: left + (w - left - right) * t / tmax
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="{left}" y="20" font-size="14">weir soak: {tmax / 60:.0f} min; grey: broker stopped, '
         'orange: broker hung (SIGSTOP), blue ticks: SIGHUP reload</text>']
    for i, (title, pts) in enumerate(panels):
        y0 = top + i * (ph + gap)
        series = [(pts, "#c0392b")] if pts is not None else [
            ([(s["t"], s["fds"]) for s in samples if s["fds"] is not None], "#2c3e50"),
            ([(s["t"], s["threads"]) for s in samples if s["threads"] is not None], "#27ae60")]
        ys = [y for p, _ in series for _, y in p] or [0]
        ymax = max(ys) * 1.1 or 1
        Y = lambda v: y0 + ph - ph * v / ymax
        for a, b, kind in outages(events):
            color = "#f0b27a" if kind.startswith("hung") else "#d5d8dc"
            o.append(f'<rect x="{X(a):.1f}" y="{y0}" width="{max(X(b) - X(a), 1):.1f}" height="{ph}" fill="{color}"/>')
        for t, e in events:
            if e.startswith("SIGHUP"):
                o.append(f'<line x1="{X(t):.1f}" y1="{y0 + ph - 8}" x2="{X(t):.1f}" y2="{y0 + ph}" stroke="#2e86c1" stroke-width="2"/>')
        o.append(f'<rect x="{left}" y="{y0}" width="{w - left - right}" height="{ph}" fill="none" stroke="#555"/>')
        o.append(f'<text x="{left}" y="{y0 - 6}" font-size="12">{title}</text>')
        for k in range(5):
            v = ymax * k / 4
            o.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
            o.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{w - right}" y2="{Y(v):.1f}" stroke="#eee"/>')
        for m in range(0, int(tmax / 60) + 1, max(1, int(tmax / 60 / 12))):
            o.append(f'<text x="{X(m * 60):.1f}" y="{y0 + ph + 14}" text-anchor="middle">{m} min</text>')
        for p, color in series:
            if p:
                d = " ".join(f"{X(t):.1f},{Y(v):.1f}" for t, v in p)
                o.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        if pts is None:
            o.append(f'<text x="{w - right - 150}" y="{y0 + 14}" fill="#2c3e50">fds</text>'
                     f'<text x="{w - right - 110}" y="{y0 + 14}" fill="#27ae60">threads</text>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def report(out, state_path, minutes):
    raw = read_csv(os.path.join(out, "soak.csv"))
    samples = [{"t": num(r["t_s"]), "rss": num(r["rss_kib"]), "fds": num(r["fds"]),
                "threads": num(r["threads"]), "rows": num(r["outbox_rows"]),
                "rin": num(r["readings_in"]), "broker": r.get("broker", "")} for r in raw]
    samples = [s for s in samples if s["t"] is not None]
    events = [(num(r["t_s"]), r["event"]) for r in read_csv(os.path.join(out, "events.csv"))]
    with open(state_path) as f:
        seq = json.load(f)
    tmax = samples[-1]["t"]
    warm = min(600.0, tmax / 6)
    after = [s for s in samples if s["t"] >= warm and s["rss"] is not None and s["broker"] != "final"]
    rss_slope = slope([s["t"] / 3600 for s in after], [s["rss"] / 1024 for s in after])
    fds = [s["fds"] for s in after]
    thr = [s["threads"] for s in after]
    rin = [s for s in samples if s["rin"] is not None]
    rate = (rin[-1]["rin"] - rin[0]["rin"]) / max(rin[-1]["t"] - rin[0]["t"], 1) if len(rin) > 1 else 0
    lines = [
        "# Soak figures",
        "",
        f"Run: {tmax / 60:.1f} min (asked: {minutes} min), sampled every 10 s; warm-up excluded from "
        f"the growth figures: first {warm / 60:.0f} min. Produced by `scripts/soak` "
        "(`WEIR_SOAK_MINUTES` sets the length).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| readings in (mean over the run) | {rate:,.0f}/s |",
        f"| RSS after warm-up: first / last / max | {after[0]['rss'] / 1024:.1f} / {after[-1]['rss'] / 1024:.1f} / "
        f"{max(s['rss'] for s in after) / 1024:.1f} MiB |" if after else "| RSS | no samples |",
        f"| RSS growth after warm-up (least squares) | {rss_slope:+.2f} MiB/hour |",
        f"| open fds after warm-up: min / max | {min(fds):.0f} / {max(fds):.0f} |" if fds else "| fds | - |",
        f"| threads after warm-up: min / max | {min(thr):.0f} / {max(thr):.0f} |" if thr else "| threads | - |",
        f"| messages at the subscriber (numbered) | {seq['numbered']:,} in {seq['series']} series |",
        f"| duplicates (at-least-once, after reconnects) | {seq['duplicates']:,} |",
        f"| **seq gaps (lost messages)** | **{seq['gaps']}** |",
        "",
        "Broker outages (outbox rows: peak; seconds from the broker's return until the outbox is back "
        "under 1,000 rows, i.e. under half a second of load; 10 s resolution). `weir_outbox_rows` is "
        "refreshed by the forwarder only while it is connected, so during an outage the gauge keeps "
        "its last value and the backlog shows in the first sample after the return:",
        "",
        "| at (min) | outage | length | outbox peak | back under 1,000 rows after |",
        "|---|---|---|---|---|",
    ]
    for a, b, kind in outages(events):
        win = [s for s in samples if a <= s["t"] and s["rows"] is not None]
        nxt = [t for t, e in events if t > b and (e.startswith("broker stopped") or e.startswith("broker SIGSTOP") or e.startswith("end"))]
        limit = nxt[0] if nxt else tmax
        # The forwarder refreshes weir_outbox_rows only while connected: the backlog shows from
        # the first sample after the broker's return, so the recovery is timed from the peak on.
        inside = [s for s in win if s["t"] <= limit]
        peak_s = max(inside, key=lambda s: s["rows"], default=None)
        peak = peak_s["rows"] if peak_s else 0
        back = next((s["t"] - b for s in inside if peak_s and s["t"] > max(b, peak_s["t"] - 1)
                     and s["rows"] < 1000), None) if peak >= 1000 else 0.0
        lines.append(f"| {a / 60:.1f} | {kind} | {b - a:.0f} s | {peak:,.0f} | "
                     f"{f'{back:.0f} s' if back is not None else 'not before the next outage'} |")
    if seq["gaps"]:
        lines += ["", "Missing seqs (first 20 per series): `" + json.dumps(seq["missing"]) + "`"]
    lines += ["", "![RSS, outbox rows, fds and threads over the run](soak.svg)", ""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    svg(samples, events, os.path.join(out, "soak.svg"))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "check":
        check(sys.argv[2])
    elif cmd == "idle":
        sys.exit(idle(sys.argv[2], float(sys.argv[3])))
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
