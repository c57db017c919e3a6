#!/usr/bin/env python3
"""A controllable pymodbus 3.16 server: the real Modbus peer of weir-modbus's tests.

    modbus_peer.py tcp PORT [--devices 1,2,3] [--delay-ms N]
    modbus_peer.py rtu PTY_PATH [--devices 1,2,3]
    modbus_peer.py tcp-rtu PORT [--devices 1,2,3]     RTU frames over TCP (a serial-to-Ethernet gateway)

Each device has, at addresses 0..299, coils, discrete inputs, holding and input registers (all zero).
Prints `ready` once serving. Commands on stdin, one per line, each answered by one line on stdout:

    set ID TABLE ADDR V...   write values (TABLE: c d h i; coils/discrete take 0/1)   -> ok
    get ID TABLE ADDR COUNT  read values                                               -> val V...
    silent ID / answer ID    stop / resume answering requests for device ID            -> ok
    exc ID CODE              answer every request for ID with exception CODE (0: off)  -> ok
    drop                     close every client TCP connection                         -> ok
    count ID                 requests seen for ID so far                               -> val N
    setv ID TABLE ADDR TYPE ORDER VALUE   encode VALUE with pymodbus's own converter        -> val REGS...
        TYPE: u16 i16 u32 i32 u64 i64 f32 f64 string; ORDER: ABCD CDAB BADC DCBA
        (CDAB/DCBA = pymodbus word_order "little"; BADC/DCBA also swap the bytes of each word)
    getv ID TABLE ADDR TYPE ORDER COUNT   decode COUNT registers the same way              -> val VALUE
    quit
"""
import asyncio
import sys

from pymodbus import FramerType
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

SIZE = 300
FC = {"c": 1, "d": 2, "h": 3, "i": 4}

silent = set()
exc = {}
seen = {}
bypass = False


DT = ModbusClientMixin.DATATYPE
TYPES = {"u16": DT.UINT16, "i16": DT.INT16, "u32": DT.UINT32, "i32": DT.INT32, "u64": DT.UINT64,
         "i64": DT.INT64, "f32": DT.FLOAT32, "f64": DT.FLOAT64, "string": DT.STRING}


def swap(regs):
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


def encode(ty, order, text):
    value = text if ty == "string" else (float(text) if ty.startswith("f") else int(text))
    word = "little" if order in ("CDAB", "DCBA") and ty != "string" else "big"
    regs = ModbusClientMixin.convert_to_registers(value, TYPES[ty], word_order=word)
    return swap(regs) if order in ("BADC", "DCBA") else regs


def decode(ty, order, regs):
    regs = swap(regs) if order in ("BADC", "DCBA") else regs
    word = "little" if order in ("CDAB", "DCBA") and ty != "string" else "big"
    v = ModbusClientMixin.convert_from_registers(regs, TYPES[ty], word_order=word)
    return v.rstrip("\x00") if isinstance(v, str) else v


def make_action(dev_id):
    async def action(fc, start, address, count, regs, values):
        if bypass:
            return None
        seen[dev_id] = seen.get(dev_id, 0) + 1
        if dev_id in silent:
            raise NoSuchIdException(f"device {dev_id} is silent")  # the server then answers nothing
        if exc.get(dev_id):
            return ExcCodes(exc[dev_id])
        return None

    return action


def device(dev_id):
    bits = lambda: [SimData(0, count=SIZE, values=False, datatype=DataType.BITS)]
    regs = lambda: [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]
    return SimDevice(id=dev_id, simdata=(bits(), bits(), regs(), regs()), action=make_action(dev_id))


async def commands(server):
    global bypass
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        line = await reader.readline()
        if not line:
            return
        w = line.decode().split()
        if not w:
            continue
        try:
            if w[0] == "set":
                dev, table, addr = int(w[1]), w[2], int(w[3])
                vals = [bool(int(v)) for v in w[4:]] if table in "cd" else [int(v) for v in w[4:]]
                bypass = True
                try:
                    r = await server.context.async_setValues(dev, FC[table], addr, vals)
                finally:
                    bypass = False
                print("ok" if r is None else f"err {r}", flush=True)
            elif w[0] == "get":
                dev, table, addr, count = int(w[1]), w[2], int(w[3]), int(w[4])
                bypass = True
                try:
                    r = await server.context.async_getValues(dev, FC[table], addr, count)
                finally:
                    bypass = False
                print("val " + " ".join(str(int(v)) for v in r), flush=True)
            elif w[0] in ("setv", "getv"):
                dev, table, addr, ty, order = int(w[1]), w[2], int(w[3]), w[4], w[5]
                bypass = True
                try:
                    if w[0] == "setv":
                        regs = encode(ty, order, " ".join(w[6:]))
                        r = await server.context.async_setValues(dev, FC[table], addr, regs)
                        out = " ".join(str(x) for x in regs)
                    else:
                        regs = await server.context.async_getValues(dev, FC[table], addr, int(w[6]))
                        out = str(decode(ty, order, list(regs)))
                finally:
                    bypass = False
                print(f"val {out}", flush=True)
            elif w[0] == "silent":
                silent.add(int(w[1]))
                print("ok", flush=True)
            elif w[0] == "answer":
                silent.discard(int(w[1]))
                print("ok", flush=True)
            elif w[0] == "exc":
                exc[int(w[1])] = int(w[2])
                print("ok", flush=True)
            elif w[0] == "count":
                print(f"val {seen.get(int(w[1]), 0)}", flush=True)
            elif w[0] == "drop":
                for conn in list(server.active_connections.values()):
                    conn.close()
                print("ok", flush=True)
            elif w[0] == "quit":
                return
            else:
                print(f"err unknown command {w[0]}", flush=True)
        except Exception as e:  # report, keep serving
            print(f"err {e!r}", flush=True)


async def main():
    kind, where = sys.argv[1], sys.argv[2]
    ids = [1]
    args = sys.argv[3:]
    if "--devices" in args:
        ids = [int(x) for x in args[args.index("--devices") + 1].split(",")]
    devices = [device(i) for i in ids]
    # With --quiet-gateway a silent device gets no answer at all; otherwise (a TCP gateway's usual
    # behaviour) it is answered with exception 0x0B, gateway target device failed to respond.
    quiet = "--quiet-gateway" in args
    if kind == "tcp":
        server = ModbusTcpServer(
            devices, framer=FramerType.SOCKET, address=("127.0.0.1", int(where)), ignore_missing_devices=quiet
        )
    elif kind == "tcp-rtu":
        server = ModbusTcpServer(devices, framer=FramerType.RTU, address=("127.0.0.1", int(where)))
    else:
        server = ModbusSerialServer(
            devices, framer=FramerType.RTU, port=where, baudrate=115200, ignore_missing_devices=True
        )
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.2)
    await commands(server)
    await server.shutdown()
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
