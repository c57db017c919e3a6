#!/usr/bin/env node
// An independent host for the ZNP emulator: zigbee-herdsman 10.9.5 (npm, the library under
// Zigbee2MQTT) starts a network on the emulator's pty, opens it for joining, and reports the
// devices that join and how their interview ends. If herdsman accepts the emulator, the emulator
// behaves like Z-Stack as far as a real host can tell, not only as far as weir believes.
//
//   node herdsman_join.js <pty path> <work dir>
//
// Events on stdout, one per line: `started <result>`, `permit-join <s>`, `joined <ieee>`,
// `interview <ieee> <status> <manufacturer> <model>`, `stopped` (after the first interview ends;
// exit 0 if it succeeded), `error <message>`. Needs NODE_PATH (or a node_modules beside it) with
// zigbee-herdsman 10.9.5: scripts/lib.sh `need_herdsman` installs it under target/herdsman.
"use strict";
const path = require("node:path");
const { Controller } = require("zigbee-herdsman");

const [port, dir] = process.argv.slice(2);
if (!port || !dir) {
    console.error("usage: herdsman_join.js <pty path> <work dir>");
    process.exit(2);
}
const say = (...w) => process.stdout.write(w.join(" ") + "\n");

const controller = new Controller({
    serialPort: { path: port, adapter: "zstack", baudRate: 115200, rtscts: false },
    databasePath: path.join(dir, "herdsman.db"),
    databaseBackupPath: path.join(dir, "herdsman.db.backup"),
    backupPath: path.join(dir, "herdsman-coordinator-backup.json"),
    network: {
        panID: 0x1a62,
        extendedPanID: [0xdd, 0xdd, 0xdd, 0xdd, 0xdd, 0xdd, 0xdd, 0xdd],
        channelList: [15],
        networkKey: [1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 13].map((b, i) => (b * 7 + i) & 0xff),
    },
    adapter: { disableLED: true, concurrent: 1 },
    acceptJoiningDeviceHandler: async () => true,
});

controller.on("deviceJoined", (e) => say("joined", e.device.ieeeAddr));
controller.on("deviceInterview", async (e) => {
    const d = e.device;
    say("interview", d.ieeeAddr, e.status, JSON.stringify(d.manufacturerName ?? null), JSON.stringify(d.modelID ?? null));
    if (e.status === "successful" || e.status === "failed") {
        // One device is the check: stop (herdsman writes its backup, closes the port) and leave.
        await controller.stop();
        say("stopped");
        process.exit(e.status === "successful" ? 0 : 1);
    }
});
controller.on("permitJoinChanged", (e) => say("permit-join-changed", e.permitted, e.time ?? ""));

process.on("SIGTERM", async () => {
    try {
        await controller.stop();
    } finally {
        process.exit(0);
    }
});

(async () => {
    try {
        const result = await controller.start();
        say("started", result);
        await controller.permitJoin(120);
        say("permit-join", 120);
    } catch (e) {
        say("error", String(e && e.stack ? e.stack : e).replace(/\n/g, " | "));
        process.exit(1);
    }
})();
