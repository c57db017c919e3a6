// Decodes Sparkplug B payloads with Eclipse Tahu's own sparkplug-payload (npm), never Weir's code.
// Input: one message per line on stdin, `<topic> <payload as hex>`. Output: one JSON document per
// line, `{"topic":…,"payload":<decoded payload>}`, with 64-bit integers (Long) as decimal strings
// and bytes as hex, so the Rust test can read them. Run with NODE_PATH at the installed modules
// (scripts/lib.sh need_sparkplug_peers exports WEIR_SPARKPLUG_NODE_PATH).
"use strict";

const sparkplug = require("sparkplug-payload").get("spBv1.0");
const readline = require("readline");

function plain(v) {
  if (v === null || v === undefined) return v;
  if (typeof v === "object" && typeof v.toNumber === "function" && "low" in v && "high" in v) {
    return v.toString();
  }
  if (v instanceof Uint8Array) return Buffer.from(v).toString("hex");
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === "object") {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = plain(x);
    return o;
  }
  return v;
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const sp = line.indexOf(" ");
  if (sp < 0) return;
  const topic = line.slice(0, sp);
  const bytes = Buffer.from(line.slice(sp + 1).trim(), "hex");
  let out;
  try {
    out = { topic, payload: plain(sparkplug.decodePayload(new Uint8Array(bytes))) };
  } catch (e) {
    out = { topic, error: String(e) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
});
