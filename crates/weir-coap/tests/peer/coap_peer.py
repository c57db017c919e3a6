"""aiocoap test peer for Weir's CoAP adapter.

  coap_peer.py request METHOD URI [--cf N] [--non] [--payload-file F | --payload TEXT]
      one request with aiocoap's client (block-wise Block1 is automatic for large bodies);
      prints one JSON line: {"code": "2.04", "payload": "...", "options": {...}}
  coap_peer.py server PORT RUN
      a server on 127.0.0.1:PORT with
        /counter  observable JSON {"count": n, "run": RUN}, changes every 100 ms, Max-Age 1
        /temp     plain-text number, not observable
        /valve    PUT/POST true|false -> 2.04 (stored, readable by GET), anything else -> 4.00
        /big      a SenML JSON pack of 150 records (about 4 KB): aiocoap sends it block-wise (Block2)
      prints "ready" once bound.
"""

import argparse
import asyncio
import json
import sys

import aiocoap
import aiocoap.resource as resource


def code_str(code):
    return "%d.%02d" % (int(code) >> 5, int(code) & 0x1F)


async def request(args):
    ctx = await aiocoap.Context.create_client_context()
    if args.payload_file:
        with open(args.payload_file, "rb") as f:
            payload = f.read()
    else:
        payload = (args.payload or "").encode()
    msg = aiocoap.Message(
        code=getattr(aiocoap, args.method.upper()),
        uri=args.uri,
        payload=payload,
    )
    if args.non:
        msg.mtype = aiocoap.NON
    if args.cf is not None:
        msg.opt.content_format = args.cf
    resp = await asyncio.wait_for(ctx.request(msg).response, 30)
    out = {
        "code": code_str(resp.code),
        "payload": resp.payload.decode("utf-8", "replace"),
        "size1": resp.opt.size1,
        "max_age": resp.opt.max_age,
        "content_format": None if resp.opt.content_format is None else int(resp.opt.content_format),
    }
    print(json.dumps(out), flush=True)
    await ctx.shutdown()


class Counter(resource.ObservableResource):
    def __init__(self, run):
        super().__init__()
        self.n = 0
        self.run = run

    async def tick(self):
        while True:
            await asyncio.sleep(0.1)
            self.n += 1
            self.updated_state()

    async def render_get(self, request):
        m = aiocoap.Message(payload=json.dumps({"count": self.n, "run": self.run}).encode())
        m.opt.content_format = 50
        m.opt.max_age = 1
        return m


class Temp(resource.Resource):
    async def render_get(self, request):
        m = aiocoap.Message(payload=b"21.5")
        m.opt.content_format = 0
        return m


class Valve(resource.Resource):
    def __init__(self):
        super().__init__()
        self.state = b"false"

    async def render_get(self, request):
        return aiocoap.Message(payload=self.state)

    async def render_put(self, request):
        if request.payload in (b"true", b"false"):
            self.state = request.payload
            print("valve=%s" % request.payload.decode(), flush=True)
            return aiocoap.Message(code=aiocoap.CHANGED)
        return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"valve takes true or false")

    render_post = render_put


class Big(resource.Resource):
    async def render_get(self, request):
        pack = [{"n": "p%d" % i, "v": i + 0.5, "u": "W"} for i in range(150)]
        m = aiocoap.Message(payload=json.dumps(pack).encode())
        m.opt.content_format = 110
        return m


async def server(args):
    root = resource.Site()
    counter = Counter(args.run)
    root.add_resource(["counter"], counter)
    root.add_resource(["temp"], Temp())
    root.add_resource(["valve"], Valve())
    root.add_resource(["big"], Big())
    await aiocoap.Context.create_server_context(root, bind=("127.0.0.1", args.port))
    task = asyncio.ensure_future(counter.tick())
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()
    task.cancel()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("request")
    r.add_argument("method")
    r.add_argument("uri")
    r.add_argument("--cf", type=int)
    r.add_argument("--non", action="store_true")
    r.add_argument("--payload")
    r.add_argument("--payload-file")
    s = sub.add_parser("server")
    s.add_argument("port", type=int)
    s.add_argument("run", type=int)
    args = p.parse_args()
    try:
        asyncio.run(request(args) if args.cmd == "request" else server(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
