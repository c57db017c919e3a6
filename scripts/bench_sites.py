#!/usr/bin/env python3
"""Cost per point at the rates real sites run: Weir and ThingsBoard IoT Gateway side by side.

Run through scripts/bench-vs-thingsboard, which makes the venvs and builds Weir. Both gateways poll
the same pymodbus devices (DEVICES units x 4 holding registers, served by several pymodbus server
processes, since one saturates near 5k requests/s) and publish to the same mosquitto. For each poll
period and each gateway, after a warm-up, this samples over the measuring window:

- points/s delivered: counted at an MQTT subscriber (Weir: one message per point; ThingsBoard:
  the keys of `values` in its `v1/gateway/telemetry` payloads);
- CPU seconds of the gateway process (utime + stime of /proc/PID/stat, all threads);
- RSS (VmRSS at the end of the window);
- bytes the gateway caused to be written to the block device (/proc/PID/io write_bytes: outbox,
  WAL, checkpoints; ThingsBoard runs with memory storage, so writes little);
- wake-ups: voluntary + involuntary context switches of all threads.

Prints one table row per run and, at the end, Weir's ratios against ThingsBoard measured in this run.

    bench_sites.py --weir PATH --modbus-python PY [--tb-python PY] [--periods 1000,100]
                   [--devices 40] [--servers 4] [--warmup-s 10] [--window-s 30] [--only weir|tb]
                   [--idle-s 60]

`--idle-s N` first measures Weir idle: connected, one device polled once an hour, nothing flowing.
`--write-budget-s N` measures Weir's bytes written per reading at 10 readings/s (the simulator)
over N s with the broker up, then N s with the broker unreachable (rows accumulate in the outbox).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "crates/weir-modbus/tests/peer/modbus_peer.py")
POINTS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


class Proc:
    """What /proc says of one process: CPU seconds, RSS, bytes written, context switches."""

    def __init__(self, pid):
        self.pid = pid

    def cpu_s(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def write_bytes(self):
        with open(f"/proc/{self.pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
        return 0

    def switches(self):
        total = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                            total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total

    def sample(self):
        return (time.monotonic(), self.cpu_s(), self.write_bytes(), self.switches())


class Counter:
    """An MQTT subscriber that counts delivered points and answers ThingsBoard's session RPC."""

    def __init__(self, port):
        self.points = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("weir/#", 0), ("v1/#", 0)])
        self.client.loop_start()

    def on_message(self, client, userdata, msg):
        t = msg.topic
        if t.startswith("v1/devices/me/rpc/request/"):
            req = json.loads(msg.payload)
            if req.get("method") == "getSessionLimits":
                rid = t.rsplit("/", 1)[1]
                answer = {"maxPayloadSize": 65536, "maxInflightMessages": 100,
                          "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,",
                                         "telemetryDataPoints": "0:0,"},
                          "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,",
                                                "telemetryDataPoints": "0:0,"}}
                client.publish(f"v1/devices/me/rpc/response/{rid}", json.dumps(answer))
            return
        n = 0
        if t == "v1/gateway/telemetry":
            for entries in json.loads(msg.payload).values():
                for e in entries if isinstance(entries, list) else [entries]:
                    n += len(e.get("values", e))
        elif t.startswith("weir/site/") and not t.endswith("/result"):
            n = 1 if t.count("/") >= 3 else len(json.loads(msg.payload).get("readings", ()))
        if n:
            with self.lock:
                self.points += n

    def count(self):
        with self.lock:
            return self.points

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


STORE = ""  # set from --commit-window-ms: a `store:` line for every Weir config
MODE = "per_reading"  # --weir-mode


def weir_config(work, broker, servers, devices, poll_ms):
    per = devices // len(servers)
    lines = [
        "gateway: { id: bench, state_dir: %s/state }" % work,
        STORE,
        "mqtt: { host: 127.0.0.1, port: %d, topic_prefix: weir, mode: %s }" % (broker, MODE),
        "sources:",
        "  - modbus:",
        "      name: plant",
        "      poll_ms: %d" % poll_ms,
        "      tcp:",
    ]
    for s, port in enumerate(servers):
        lines.append("        - { host: 127.0.0.1, port: %d, response_timeout_ms: 2000, devices: [" % port)
        for u in range(1, per + 1):
            pts = ", ".join("{ name: p%d, table: holding, address: %d }" % (i, i) for i in range(POINTS))
            lines.append("            { id: site/s%d-u%d, unit: %d, points: [ %s ] }," % (s, u, u, pts))
        lines.append("          ] }")
    path = os.path.join(work, "gateway.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def tb_config(work, broker, servers, devices, poll_ms):
    per = devices // len(servers)
    slaves = []
    for s, port in enumerate(servers):
        for u in range(1, per + 1):
            slaves.append({
                "name": f"s{s}-u{u}", "host": "127.0.0.1", "port": port, "type": "tcp",
                "method": "socket", "timeout": 2, "byteOrder": "BIG", "wordOrder": "BIG",
                "retries": True, "retryOnEmpty": True, "retryOnInvalid": True,
                "pollPeriod": poll_ms, "unitId": u, "deviceName": f"site/s{s}-u{u}",
                "deviceType": "default", "sendDataOnlyOnChange": False,
                "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 300000,
                "attributes": [], "attributeUpdates": [], "rpc": [],
                "timeseries": [{"tag": f"p{i}", "type": "16uint", "functionCode": 3,
                                "objectsCount": 1, "address": i} for i in range(POINTS)],
            })
    conf = {
        "thingsboard": {
            "host": "127.0.0.1", "port": broker, "remoteShell": False, "remoteConfiguration": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False}, "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50, "minPackSizeToSend": 500, "checkConnectorsConfigurationInSeconds": 3600,
            "handleDeviceRenaming": False, "checkingDeviceActivity": {"checkDeviceInactivity": False},
            "qos": 1, "security": {"type": "accessToken", "accessToken": "bench"},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    with open(os.path.join(work, "tb_gateway.json"), "w") as f:
        json.dump(conf, f)
    with open(os.path.join(work, "modbus.json"), "w") as f:
        json.dump({"master": {"slaves": slaves}, "slave": None}, f)
    with open(os.path.join(work, "logs.json"), "w") as f:
        json.dump({"version": 1, "disable_existing_loggers": False,
                   "handlers": {"null": {"class": "logging.NullHandler"}},
                   "root": {"level": "ERROR", "handlers": ["null"]}}, f)


def measure(label, proc, counter, warmup_s, window_s, expected_points_s):
    """Warm up (points must flow), then sample over the window. Returns a result dict."""
    deadline = time.monotonic() + warmup_s * 6
    start = counter.count()
    while counter.count() - start < expected_points_s * min(warmup_s, 3):
        if proc.poll() is not None:
            raise RuntimeError(f"{label}: exited with {proc.returncode} during warm-up")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: fewer than expected points arrive ({counter.count() - start})")
        time.sleep(0.2)
    time.sleep(warmup_s)
    p = Proc(proc.pid)
    c0, s0 = counter.count(), p.sample()
    time.sleep(window_s)
    c1, s1 = counter.count(), p.sample()
    wall = s1[0] - s0[0]
    points = c1 - c0
    cpu = s1[1] - s0[1]
    return {
        "gateway": label, "points_s": points / wall, "cpu_pct": 100 * cpu / wall,
        "points_per_cpu_s": points / cpu if cpu > 0 else float("inf"), "rss_mb": p.rss_mb(),
        "write_bytes_per_point": (s1[2] - s0[2]) / max(points, 1),
        "write_bytes_s": (s1[2] - s0[2]) / wall, "wakeups_s": (s1[3] - s0[3]) / wall,
    }


def write_budget(a, work, broker):
    """Bytes written to the block device per reading at 10 readings/s, broker up then down."""
    for label, port in (("broker up", broker), ("broker down", free_port())):
        d = os.path.join(work, "budget-" + label.replace(" ", "-"))
        os.makedirs(d)
        cfg = os.path.join(d, "gateway.yaml")
        with open(cfg, "w") as f:
            f.write(f"gateway: {{ id: budget, state_dir: {d}/state }}\n"
                    f"mqtt: {{ host: 127.0.0.1, port: {port}, topic_prefix: budget }}\n"
                    f"{STORE}\nsources:\n  - sim: {{ greenhouses: 1, beds: 1, readings_per_s: 10 }}\n")
        w = subprocess.Popen([a.weir, "run", "-c", cfg], stderr=subprocess.DEVNULL,
                             env=dict(os.environ, WEIR_LOG="error"))
        try:
            time.sleep(3)
            p = Proc(w.pid)
            s0 = p.sample()
            time.sleep(a.write_budget_s)
            s1 = p.sample()
        finally:
            stop(w)
        wall = s1[0] - s0[0]
        per_s = (s1[2] - s0[2]) / wall
        print(f"Weir at 10 readings/s, {label}: {per_s:.0f} bytes written/s, {per_s / 10:.0f} per reading, "
              f"{per_s * 86400 * 365 / 1e9:.2f} GB a year, CPU {100 * (s1[1] - s0[1]) / wall:.3f} %",
              flush=True)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--modbus-python", required=True)
    ap.add_argument("--tb-python")
    ap.add_argument("--periods", default="1000,100")
    ap.add_argument("--devices", type=int, default=40)
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--warmup-s", type=float, default=10)
    ap.add_argument("--window-s", type=float, default=30)
    ap.add_argument("--idle-s", type=float, default=0)
    ap.add_argument("--write-budget-s", type=float, default=0)
    ap.add_argument("--weir-mode", default="per_reading",
                    help="Weir's mqtt.mode: per_reading (default) or per_device (one message per device poll)")
    ap.add_argument("--commit-window-ms", type=int, help="Weir's store.commit_window_ms (default: Weir's)")
    ap.add_argument("--only", choices=["weir", "tb"])
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    global STORE, MODE
    MODE = a.weir_mode
    if a.commit_window_ms is not None:
        STORE = "store: { commit_window_ms: %d }" % a.commit_window_ms
    if a.devices % a.servers:
        sys.exit("--devices must be a multiple of --servers")

    work = tempfile.mkdtemp(prefix="weir-bench-")
    procs = []
    try:
        broker = free_port()
        with open(os.path.join(work, "mosquitto.conf"), "w") as f:
            f.write(f"listener {broker} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    f"max_queued_messages 100000\nuser {os.environ.get('USER') or 'root'}\n")
        procs.append(subprocess.Popen(["mosquitto", "-c", os.path.join(work, "mosquitto.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(broker)
        servers = []
        per = a.devices // a.servers
        for _ in range(a.servers):
            port = free_port()
            p = subprocess.Popen([a.modbus_python, PEER, "tcp", str(port), "--devices",
                                  ",".join(str(u) for u in range(1, per + 1))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(p)
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a pymodbus server did not start")
            servers.append(port)
        counter = Counter(broker)
        results = []

        if a.idle_s and a.only != "tb":
            idle_dir = os.path.join(work, "idle")
            os.makedirs(idle_dir)
            cfg = weir_config(idle_dir, broker, servers[:1], 1, 3_600_000)
            w = subprocess.Popen([a.weir, "run", "-c", cfg], stderr=subprocess.DEVNULL,
                                 env=dict(os.environ, WEIR_LOG="warn"))
            procs.append(w)
            start = counter.count()
            while counter.count() - start < POINTS:  # the first (and only) poll arrives
                time.sleep(0.1)
            time.sleep(3)
            p = Proc(w.pid)
            s0 = p.sample()
            time.sleep(a.idle_s)
            s1 = p.sample()
            wall = s1[0] - s0[0]
            print(f"Weir idle over {wall:.0f} s: {100 * (s1[1] - s0[1]) / wall:.3f} % of a core, "
                  f"{(s1[3] - s0[3]) / wall:.2f} wake-ups/s, {(s1[2] - s0[2]) / wall:.0f} bytes written/s, "
                  f"RSS {p.rss_mb():.1f} MB", flush=True)
            stop(w)

        if a.write_budget_s and a.only != "tb":
            write_budget(a, work, broker)

        hdr = (f"{'poll':>7} {'gateway':<10} {'points/s':>9} {'CPU %':>7} {'points/CPU-s':>13} "
               f"{'RSS MB':>7} {'B written/point':>16} {'wake-ups/s':>11}")
        print(hdr, flush=True)
        for period in [int(x) for x in a.periods.split(",")]:
            expected = a.devices * POINTS * 1000 / period
            for gw in ("weir", "tb"):
                if a.only and a.only != gw:
                    continue
                run_dir = os.path.join(work, f"{gw}-{period}")
                os.makedirs(run_dir)
                if gw == "weir":
                    cfg = weir_config(run_dir, broker, servers, a.devices, period)
                    p = subprocess.Popen([a.weir, "run", "-c", cfg], stderr=subprocess.DEVNULL,
                                         env=dict(os.environ, WEIR_LOG="warn"))
                    label = "Weir"
                else:
                    if not a.tb_python:
                        continue
                    tb_config(run_dir, broker, servers, a.devices, period)
                    p = subprocess.Popen([a.tb_python, "-c",
                                          "from thingsboard_gateway.gateway.tb_gateway_service import TBGatewayService;"
                                          f"TBGatewayService({json.dumps(os.path.join(run_dir, 'tb_gateway.json'))})"],
                                         cwd=run_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         env=dict(os.environ, TB_GW_CONFIG_DIR=run_dir + "/",
                                                  TB_GW_LOGS_PATH=run_dir + "/"))
                    label = "ThingsBoard"
                procs.append(p)
                try:
                    r = measure(label, p, counter, a.warmup_s, a.window_s, expected)
                finally:
                    stop(p)
                r["poll_ms"] = period
                results.append(r)
                print(f"{period:>5}ms {r['gateway']:<10} {r['points_s']:>9.0f} {r['cpu_pct']:>7.2f} "
                      f"{r['points_per_cpu_s']:>13.0f} {r['rss_mb']:>7.1f} "
                      f"{r['write_bytes_per_point']:>16.1f} {r['wakeups_s']:>11.0f}", flush=True)
        for period in sorted({r["poll_ms"] for r in results}, reverse=True):
            by = {r["gateway"]: r for r in results if r["poll_ms"] == period}
            if "Weir" in by and "ThingsBoard" in by:
                w, t = by["Weir"], by["ThingsBoard"]
                print(f"{period} ms polls: Weir / ThingsBoard points per CPU-second "
                      f"{w['points_per_cpu_s'] / t['points_per_cpu_s']:.1f}x, RSS {t['rss_mb'] / w['rss_mb']:.1f}x "
                      f"smaller, delivered {w['points_s']:.0f} vs {t['points_s']:.0f} points/s")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)
        counter.close()
    finally:
        for p in reversed(procs):
            stop(p)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
