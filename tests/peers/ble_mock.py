#!/usr/bin/env python3
"""BlueZ for the BLE tests: a private system bus with python-dbusmock's bluez5 template on it.

Starts `dbus-daemon` on a socket in DIR (permissive policy), then `python3 -m dbusmock --system
--template bluez5` on that bus, prints `bus <address>` and `ready`, and then reads one command a
line on stdin, answering `ok …` or `err …` on stdout:

    adapter NAME                    org.bluez.Mock.AddAdapter(NAME)
    remove_adapter NAME             org.bluez.Mock.RemoveAdapter(NAME) (devices stay, as after a crash)
    device MAC                      AddDevice on hci0 (ManufacturerData/ServiceData reset to empty
                                    with the right D-Bus types: the template's are wrong)
    mfr MAC CID HEX                 set Device1.ManufacturerData = {CID: bytes}: PropertiesChanged
    svc MAC UUID HEX                set Device1.ServiceData = {UUID: bytes}
    rssi MAC DBM                    set Device1.RSSI
    restart_bluez                   stop the mock (org.bluez loses its owner), start a new one (a new
                                    owner), re-add the adapters and devices it had
    many N                          add N devices 10:00:00:xx:xx:xx (RSSI set, no data)
    burst N                         N BTHome adverts round-robin over the `many` devices, each with a
                                    new packet id (pipelined, one round trip per 200); prints
                                    `ok burst N SECONDS`
    owner                           print the unique name owning org.bluez
    gatt MAC SVC CHAR HEX FLAGS     a GATT service SVC (added once) with characteristic CHAR on the
                                    device, value HEX, flags comma-separated (read,write,notify);
                                    the device's Connect/Disconnect then set Connected and
                                    ServicesResolved (the template's do not)
    notify MAC CHAR HEX             the characteristic's value changes: PropertiesChanged(Value),
                                    which BlueZ sends for a notification while Notifying is true
    fail_writes MAC CHAR ERROR [MSG]  writes to CHAR fail with D-Bus error ERROR (org.bluez.Error.*)
    value MAC CHAR                  print the characteristic's value (what a write stored)
    drop MAC                        the device drops the connection (Connected=false)
    connected MAC                   print 1 when the device is connected, else 0

Every advert is set the way BlueZ reports one (python-dbusmock's Properties.Set emits
PropertiesChanged, which btleplug turns into advertisement events). See ../../PEERS notes: Set
with dbus types, not UpdateProperties.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

import dbus
import dbus.lowlevel

DIR = sys.argv[1]
DEVICE_IFACE = "org.bluez.Device1"

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">100000000</limit>
  <limit name="max_replies_per_connection">1000000</limit>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


def die_with_parent():
    # PR_SET_PDEATHSIG: our children go when we go, even on SIGKILL.
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


sock = os.path.join(DIR, "system_bus_socket")
conf = os.path.join(DIR, "bus.conf")
with open(conf, "w") as f:
    f.write(BUS_CONF.format(sock=sock))
daemon = subprocess.Popen(["dbus-daemon", "--config-file", conf, "--nofork", "--nopidfile"],
                          preexec_fn=die_with_parent,
                          stderr=open(os.path.join(DIR, "dbus-daemon.log"), "w"))
address = "unix:path=" + sock
os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
deadline = time.time() + 10
while not os.path.exists(sock):
    if time.time() > deadline:
        sys.exit("dbus-daemon did not start")
    time.sleep(0.02)
bus = dbus.SystemBus()

mock = None
adapters = []
devices = []
many = []


def has_owner():
    return bool(bus.name_has_owner("org.bluez"))


def start_mock():
    global mock
    mock = subprocess.Popen([sys.executable, "-m", "dbusmock", "--system", "--template", "bluez5"],
                            preexec_fn=die_with_parent, stdout=subprocess.DEVNULL)
    deadline = time.time() + 20
    while not has_owner():
        if time.time() > deadline:
            sys.exit("the bluez5 mock did not start")
        time.sleep(0.02)


def mock_iface():
    return dbus.Interface(bus.get_object("org.bluez", "/"), "org.bluez.Mock")


def dev_path(mac, adapter="hci0"):
    return f"/org/bluez/{adapter}/dev_" + mac.replace(":", "_").upper()


def props(mac):
    return dbus.Interface(bus.get_object("org.bluez", dev_path(mac)), dbus.PROPERTIES_IFACE)


def add_device(mac):
    mock_iface().AddDevice("hci0", mac, "weir-test")
    p = props(mac)
    p.Set(DEVICE_IFACE, "ManufacturerData", dbus.Dictionary({}, signature="qv"))
    p.Set(DEVICE_IFACE, "ServiceData", dbus.Dictionary({}, signature="sv"))


gatt_services = {}
gatt_chars = {}


def root_mock():
    return dbus.Interface(bus.get_object("org.bluez", "/"), "org.freedesktop.DBus.Mock")


def emit_added(path, iface):
    # InterfacesAdded with the object's properties, as BlueZ's ObjectManager announces it.
    props_now = dbus.Interface(bus.get_object("org.bluez", path), dbus.PROPERTIES_IFACE).GetAll(iface)
    root_mock().EmitSignal("org.freedesktop.DBus.ObjectManager", "InterfacesAdded", "oa{sa{sv}}",
                           [dbus.ObjectPath(path), {iface: props_now}])


def ay(hexstr):
    return dbus.Array(bytes.fromhex(hexstr), signature="y")


def full_uuid(u):
    return f"0000{u}-0000-1000-8000-00805f9b34fb" if len(u) == 4 else u


start_mock()
print(f"bus {address}", flush=True)
print("ready", flush=True)

for line in sys.stdin:
    w = line.split()
    if not w:
        continue
    try:
        cmd = w[0]
        if cmd == "adapter":
            mock_iface().AddAdapter(w[1], "weir-test")
            adapters.append(w[1])
        elif cmd == "remove_adapter":
            mock_iface().RemoveAdapter(w[1])
            adapters.remove(w[1])
        elif cmd == "device":
            add_device(w[1])
            devices.append(w[1])
        elif cmd == "mfr":
            props(w[1]).Set(DEVICE_IFACE, "ManufacturerData", dbus.Dictionary(
                {dbus.UInt16(int(w[2], 0)): dbus.Array(bytes.fromhex(w[3]), signature="y", variant_level=1)},
                signature="qv"))
        elif cmd == "svc":
            props(w[1]).Set(DEVICE_IFACE, "ServiceData", dbus.Dictionary(
                {full_uuid(w[2]): dbus.Array(bytes.fromhex(w[3]), signature="y", variant_level=1)},
                signature="sv"))
        elif cmd == "rssi":
            props(w[1]).Set(DEVICE_IFACE, "RSSI", dbus.Int16(int(w[2])))
        elif cmd == "restart_bluez":
            mock.terminate()
            mock.wait()
            deadline = time.time() + 10
            while has_owner():
                if time.time() > deadline:
                    raise RuntimeError("org.bluez kept its owner")
                time.sleep(0.02)
            start_mock()
            for a in adapters:
                mock_iface().AddAdapter(a, "weir-test")
            for d in devices:
                add_device(d)
            for d in many:
                add_device(d)
        elif cmd == "many":
            for i in range(int(w[1])):
                mac = "10:00:00:%02X:%02X:%02X" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
                add_device(mac)
                props(mac).Set(DEVICE_IFACE, "RSSI", dbus.Int16(-50 - i % 40))
                many.append(mac)
        elif cmd == "burst":
            n = int(w[1])
            uuid = full_uuid("fcd2")
            t0 = time.time()
            for i in range(n):
                k = i % len(many)
                pid = (i // len(many)) & 255
                # BTHome v2: packet id, temperature 0.01 °C, humidity 0.01 %.
                data = bytes([0x40, 0x00, pid, 0x02]) + (2000 + i % 500).to_bytes(2, "little") \
                    + bytes([0x03]) + (5000 + k).to_bytes(2, "little")
                msg = dbus.lowlevel.MethodCallMessage("org.bluez", dev_path(many[k]),
                                                      dbus.PROPERTIES_IFACE, "Set")
                msg.append(DEVICE_IFACE, "ServiceData", dbus.Dictionary(
                    {uuid: dbus.Array(data, signature="y", variant_level=1)}, signature="sv"),
                    signature="ssv")
                # Pipelined: one round trip per 200 calls (the mock answers in order).
                if (i + 1) % 200 == 0 or i == n - 1:
                    bus.send_message_with_reply_and_block(msg, 60_000)
                else:
                    bus.send_message(msg)
            print(f"ok burst {n} {time.time() - t0:.3f}", flush=True)
            continue
        elif cmd == "gatt":
            mac, svc, char, value, flags = w[1], full_uuid(w[2]), full_uuid(w[3]), w[4], w[5]
            dev = dev_path(mac)
            dev_obj = dbus.Interface(bus.get_object("org.bluez", dev), "org.freedesktop.DBus.Mock")
            svc_path = gatt_services.get((mac, svc))
            if svc_path is None:
                svc_path = f"{dev}/service{len(gatt_services) + 1:04x}"
                gatt_services[(mac, svc)] = svc_path
                root_mock().AddObject(svc_path, "org.bluez.GattService1", {
                    "UUID": dbus.String(svc, variant_level=1),
                    "Primary": dbus.Boolean(True, variant_level=1),
                    "Device": dbus.ObjectPath(dev, variant_level=1),
                    "Includes": dbus.Array([], signature="o", variant_level=1),
                    "Handle": dbus.UInt16(len(gatt_services), variant_level=1),
                }, [("Dummy", "", "", "")])  # an interface without methods breaks btleplug's introspection
                emit_added(svc_path, "org.bluez.GattService1")
                # Connect / Disconnect that set the properties a client waits for.
                dev_obj.AddMethod("org.bluez.Device1", "Connect", "", "",
                                  "self.connects = getattr(self, 'connects', 0) + 1\n"
                                  "self.Set('org.bluez.Device1', 'Connected', dbus.Boolean(True))\n"
                                  "self.Set('org.bluez.Device1', 'ServicesResolved', dbus.Boolean(True))")
                dev_obj.AddMethod("org.bluez.Device1", "Disconnect", "", "",
                                  "self.Set('org.bluez.Device1', 'ServicesResolved', dbus.Boolean(False))\n"
                                  "self.Set('org.bluez.Device1', 'Connected', dbus.Boolean(False))")
            n = sum(1 for k in gatt_chars if k[0] == mac) + 1
            char_path = f"{svc_path}/char{n:04x}"
            gatt_chars[(mac, char)] = char_path
            root_mock().AddObject(char_path, "org.bluez.GattCharacteristic1", {
                "UUID": dbus.String(char, variant_level=1),
                "Service": dbus.ObjectPath(svc_path, variant_level=1),
                "Value": dbus.Array(bytes.fromhex(value), signature="y", variant_level=1),
                "Notifying": dbus.Boolean(False, variant_level=1),
                "Flags": dbus.Array(flags.split(","), signature="s", variant_level=1),
                "Handle": dbus.UInt16(0x10 + n, variant_level=1),
            }, [
                ("ReadValue", "a{sv}", "ay", "ret = self.Get('org.bluez.GattCharacteristic1', 'Value')"),
                ("WriteValue", "aya{sv}", "",
                 "fail = getattr(self, 'fail', None)\n"
                 "if fail: raise dbus.exceptions.DBusException(fail[1], name=fail[0])\n"
                 "self.Set('org.bluez.GattCharacteristic1', 'Value', dbus.Array(args[0], signature='y'))"),
                ("StartNotify", "", "", "self.Set('org.bluez.GattCharacteristic1', 'Notifying', dbus.Boolean(True))"),
                ("StopNotify", "", "", "self.Set('org.bluez.GattCharacteristic1', 'Notifying', dbus.Boolean(False))"),
            ])
            emit_added(char_path, "org.bluez.GattCharacteristic1")
        elif cmd == "notify":
            chp = dbus.Interface(bus.get_object("org.bluez", gatt_chars[(w[1], full_uuid(w[2]))]),
                                 dbus.PROPERTIES_IFACE)
            chp.Set("org.bluez.GattCharacteristic1", "Value", dbus.Array(bytes.fromhex(w[3]), signature="y"))
        elif cmd == "fail_writes":
            obj = bus.get_object("org.bluez", gatt_chars[(w[1], full_uuid(w[2]))])
            msg = " ".join(w[4:]) or "failed"
            dbus.Interface(obj, "org.freedesktop.DBus.Mock").AddMethod(
                "org.bluez.GattCharacteristic1", "WriteValue", "aya{sv}", "",
                f"raise dbus.exceptions.DBusException({msg!r}, name={w[3]!r})")
        elif cmd == "value":
            chp = dbus.Interface(bus.get_object("org.bluez", gatt_chars[(w[1], full_uuid(w[2]))]),
                                 dbus.PROPERTIES_IFACE)
            v = chp.Get("org.bluez.GattCharacteristic1", "Value")
            print("ok value " + bytes(v).hex(), flush=True)
            continue
        elif cmd == "drop":
            props(w[1]).Set(DEVICE_IFACE, "ServicesResolved", dbus.Boolean(False))
            props(w[1]).Set(DEVICE_IFACE, "Connected", dbus.Boolean(False))
        elif cmd == "connected":
            print("ok connected " + str(int(props(w[1]).Get(DEVICE_IFACE, "Connected"))), flush=True)
            continue
        elif cmd == "owner":
            print("ok owner " + str(bus.get_name_owner("org.bluez")), flush=True)
            continue
        else:
            raise RuntimeError("unknown command " + cmd)
        print("ok " + cmd, flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported to the test
        print(f"err {cmd}: {e}".replace("\n", " "), flush=True)

mock.terminate()
daemon.terminate()
