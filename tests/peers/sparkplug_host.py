"""A Sparkplug B host application written on pysparkplug (PyPI), independent of Weir.

It publishes its STATE (retained, with a will saying offline), subscribes `spBv1.0/<group>/#`,
decodes every message with pysparkplug (aliases resolved through the births it saw), and prints
one JSON line per message on stdout:

    {"type": "DDATA", "node": "...", "device": "...", "seq": 7, "bdseq": null,
     "metrics": [{"name": "...", "alias": 3, "value": 21.5, "historical": false,
                  "datatype": "DOUBLE", "null": false}]}

The host also checks `seq` itself, as a Sparkplug host must (spec 3.0, "Sequence Number"): per
edge node, NBIRTH carries 0 and every later NDATA/DBIRTH/DDATA/DDEATH of that session the next
value modulo 256. A message out of order prints `{"type": "seq_gap", ...}`; a step from 255 to 0
counts as a wrap. The command `seq` prints `{"type": "seq_report", "wraps": N, "checked": M,
"gaps": G}`.

Commands, one per line on stdin:
    seq                                    print the host's own seq report
    online | offline                      publish STATE (retained)
    rebirth <node>                         NCMD Node Control/Rebirth = true
    dcmd <node> <device> <metric> <json>   DCMD writing one value (bool, int or float)

Usage: python sparkplug_host.py <port> <group_id> <host_id>
"""

import json
import sys
import threading

import pysparkplug as psp


def main() -> None:
    port, group, host_id = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    out_lock = threading.Lock()

    def emit(doc):
        with out_lock:
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()

    client = psp.Client(client_id=f"host-{host_id}")
    state_topic = psp.Topic(message_type=psp.MessageType.STATE, sparkplug_host_id=host_id)

    def state(online: bool) -> psp.Message:
        return psp.Message(
            topic=state_topic,
            payload=psp.State(timestamp=psp.get_current_timestamp(), online=online),
            qos=psp.QoS.AT_LEAST_ONCE,
            retain=True,
        )

    client.set_will(state(False))

    # The host's own seq check, per edge node: the next expected seq, or None outside a session.
    expected = {}
    report = {"wraps": 0, "checked": 0, "gaps": 0}

    def check_seq(kind: str, node: str, seq) -> None:
        if kind == "NBIRTH":
            expected[node] = 1
            return
        if kind == "NDEATH":
            expected[node] = None
            return
        if kind not in ("NDATA", "DBIRTH", "DDATA", "DDEATH"):
            return
        want = expected.get(node)
        report["checked"] += 1
        if want is None or seq != want:
            report["gaps"] += 1
            emit({"type": "seq_gap", "node": node, "kind": kind, "want": want, "got": seq})
        elif seq == 0:
            report["wraps"] += 1
        expected[node] = (seq + 1) % 256 if seq is not None else None

    def on_message(_client, message: psp.Message) -> None:
        t = message.topic
        p = message.payload
        doc = {
            "type": str(t.message_type.value if hasattr(t.message_type, "value") else t.message_type),
            "node": t.edge_node_id,
            "device": t.device_id,
            "seq": getattr(p, "seq", None),
            "bdseq": None,
            "metrics": [],
        }
        metrics = list(getattr(p, "metrics", ()) or ())
        bd = getattr(p, "bd_seq_metric", None)
        if bd is not None:
            metrics.append(bd)
        for m in metrics:
            if m.name == "bdSeq":
                doc["bdseq"] = m.value
            v = m.value
            if isinstance(v, (bytes, bytearray)):
                v = v.hex()
            doc["metrics"].append(
                {
                    "name": m.name,
                    "alias": m.alias,
                    "ts": m.timestamp,
                    "value": v,
                    "historical": bool(m.is_historical),
                    "null": bool(m.is_null),
                    "datatype": m.datatype.name,
                }
            )
        check_seq(doc["type"], t.edge_node_id, doc["seq"])
        emit(doc)

    connected = threading.Event()
    client.connect("127.0.0.1", port=port, blocking=False, callback=lambda _c: connected.set())
    if not connected.wait(10):
        emit({"type": "error", "error": "could not connect"})
        sys.exit(1)
    client.subscribe(psp.Topic(group_id=group, message_type="#"), psp.QoS.AT_LEAST_ONCE, on_message)
    emit({"type": "ready"})

    def command(words) -> None:
        now = psp.get_current_timestamp()
        if words[0] == "seq":
            emit({"type": "seq_report", **report})
        elif words[0] in ("online", "offline"):
            client.publish(state(words[0] == "online"))
        elif words[0] == "rebirth":
            metric = psp.Metric(
                timestamp=now,
                name="Node Control/Rebirth",
                datatype=psp.DataType.BOOLEAN,
                value=True,
            )
            client.publish(
                psp.Message(
                    topic=psp.Topic(group_id=group, message_type=psp.MessageType.NCMD, edge_node_id=words[1]),
                    payload=psp.NCmd(timestamp=now, metrics=(metric,)),
                    qos=psp.QoS.AT_MOST_ONCE,
                    retain=False,
                ),
                include_dtypes=True,
            )
        elif words[0] == "dcmd":
            node, device, name, raw = words[1], words[2], words[3], json.loads(words[4])
            if isinstance(raw, bool):
                dt = psp.DataType.BOOLEAN
            elif isinstance(raw, int):
                dt = psp.DataType.INT64
            else:
                dt = psp.DataType.DOUBLE
            metric = psp.Metric(timestamp=now, name=name, datatype=dt, value=raw)
            client.publish(
                psp.Message(
                    topic=psp.Topic(
                        group_id=group,
                        message_type=psp.MessageType.DCMD,
                        edge_node_id=node,
                        device_id=device,
                    ),
                    payload=psp.DCmd(timestamp=now, metrics=(metric,)),
                    qos=psp.QoS.AT_MOST_ONCE,
                    retain=False,
                ),
                include_dtypes=True,
            )

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            command(words)
        except Exception as e:  # not connected (a broker outage): say so and go on
            emit({"type": "error", "command": words[0], "error": str(e)})
            continue
        emit({"type": "done", "command": words[0]})


if __name__ == "__main__":
    main()
