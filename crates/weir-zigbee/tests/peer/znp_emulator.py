#!/usr/bin/env python3
"""A TI Z-Stack 3.x ZNP coordinator emulator on a pty, for weir-zigbee's tests.

Every MT frame it sends or parses goes through zigpy-znp's own command definitions
(`zigpy_znp.commands`, `TransportFrame`), and every ZCL/ZDO payload through zigpy's
(`zigpy.zcl.foundation`, `zigpy.zdo.types`), so frame layouts come from an implementation others
wrote, not from weir's idea of them.

    znp_emulator.py --link /tmp/x/ttyZNP --state /tmp/x/nv.json

It creates a pty and links its device to --link (the "stick"). NV items are kept in --state
(formed or not, PAN id, key …) so the network survives a restart of the emulator. Control lines on
stdin, events on stdout (one line each, flushed):

    join <ieee> <nwk> temp|plug|door|dimmer|meter|aqara  announce a device (only while permit join is open; else
                                  prints `join-refused <ieee>`)
    report <nwk> temperature <°C> | humidity <%> | onoff 0|1 | level 0–254 | power|voltage|energy <raw>
    zone <nwk> <status>           an IAS Zone Status Change Notification (door kind)
    xiaomi <nwk> <mV> <°C> <%> <Pa>  an Aqara heartbeat: Basic attribute 0xFF01 (type 0x42) holding
                                  tagged values (battery mV, device temperature, temperature,
                                  humidity, pressure), LUMI's manufacturer code in the header
    flood <nwk> <n>               n temperature reports back to back (benchmark)
    joinmany <n>                  n temperature sensors announce themselves (benchmark)
    drop <nwk>                    the device disappears silently (requests to it get MAC_NO_ACK)
    leave <nwk>                   the device leaves the network (ZDO_LEAVE_IND)
    mute / unmute                 stop / resume answering requests (a wedged coordinator)
    vanish                        close the pty and remove the link (the stick is unplugged)
    return                        a new pty at the same link (plugged back)
    garbage                       write stray bytes and a frame with a bad FCS
    reset                         an unsolicited SYS_RESET_IND (a watchdog reset mid-run)
    quit

Events: `ready`, `frame <NAME>` for every request parsed, `formed`, `started`, `permit-join <s>`,
`joined <ieee>`, `bind <nwk> <cluster>` (or `bind-wrong …` when not bound to the coordinator),
`configure-reporting <nwk> <cluster> <attr> <type> <min> <max> <change|->`, `onoff <nwk> <0|1>`,
`cie-written <nwk>`, `enrolled <nwk> <code> <zone id>`, `af-ext <mode> <cluster>` (an
AF_DATA_REQUEST_EXT to no emulated device), `unhandled <request>` (answered with an RPC error, as
Z-Stack does), `vanished`, `returned`.

Besides weir, zigbee-herdsman 10.9.5 runs against it (tests/peer/herdsman_join.js): NV items by
length/offset, the extended NV tables (empty), the coordinator's own endpoints and descriptors,
groups and route discovery are answered the way Z-Stack 3.x answers them.
"""
import argparse
import asyncio
import json
import os
import select
import sys
import time
import tty

import zigpy.types as zt
import zigpy.zcl.foundation as f
import zigpy.zdo.types as zdo_t
from zigpy.zcl.clusters.security import IasZone
import zigpy_znp.commands as c
import zigpy_znp.frames as frames
import zigpy_znp.types as t
from zigpy_znp.commands.app_config import BDBCommissioningMode, BDBCommissioningStatus
from zigpy_znp.exceptions import InvalidFrame

# The "configured" flag hosts write once they formed a network: 0x0060 on Z-Stack 3 (zigpy-znp's
# and zigbee-herdsman's HAS_CONFIGURED_ZSTACK3), 0x0F00 on Z-Stack 1.2 (HAS_CONFIGURED_ZSTACK1).
HAS_CONFIGURED = (t.uint16_t(0x0060), t.uint16_t(0x0F00))
NV_NIB = 0x0021
NV_EXTPANID = 0x002D
NV_NWK_ACTIVE_KEY_INFO = 0x003A
NV_NWK_ALTERN_KEY_INFO = 0x003B
NV_PRECFGKEY = 0x0062
NV_PANID = 0x0083
NV_CHANLIST = 0x0084
NV_NWKKEY = 0x0082
COORD_IEEE = t.EUI64.convert("00:12:4b:00:00:00:00:01")

DEVICES = {
    "temp": dict(
        logical=zdo_t.LogicalType.EndDevice, mains=False,
        inputs=[0x0000, 0x0001, 0x0402, 0x0405], outputs=[], device_type=0x0302,
        model="TH-1", manufacturer="Weir Test", power_source=0x03,
    ),
    "door": dict(
        logical=zdo_t.LogicalType.EndDevice, mains=False,
        inputs=[0x0000, 0x0001, 0x0500], outputs=[], device_type=0x0402,
        model="DOOR-1", manufacturer="Weir Test", power_source=0x03, zone_type=IasZone.ZoneType.Contact_Switch,
    ),
    "dimmer": dict(
        logical=zdo_t.LogicalType.Router, mains=True,
        inputs=[0x0000, 0x0006, 0x0008], outputs=[], device_type=0x0101,
        model="DIM-1", manufacturer="Weir Test", power_source=0x01,
    ),
    "meter": dict(
        logical=zdo_t.LogicalType.Router, mains=True,
        inputs=[0x0000, 0x0006, 0x0702, 0x0B04], outputs=[], device_type=0x0051,
        model="METER-1", manufacturer="Weir Test", power_source=0x01,
        # ACPowerMultiplier/Divisor 1/10, ACVoltage 1/1 (absent: unsupported), metering 1/1000.
        attrs={0x0B04: {0x0604: (0x21, 1), 0x0605: (0x21, 10)}, 0x0702: {0x0301: (0x22, 1), 0x0302: (0x22, 1000)}},
    ),
    # An Aqara temperature/humidity/pressure sensor (WSDCGQ11LM) as it describes itself: its
    # battery only shows in the 0xFF01 heartbeat (`xiaomi` below).
    "aqara": dict(
        logical=zdo_t.LogicalType.EndDevice, mains=False,
        inputs=[0x0000, 0x0003, 0xFFFF, 0x0402, 0x0403, 0x0405], outputs=[0x0000, 0x0004, 0xFFFF], device_type=0x5F01,
        model="lumi.weather", manufacturer="LUMI", power_source=0x03,
    ),
    "plug": dict(
        logical=zdo_t.LogicalType.Router, mains=True,
        inputs=[0x0000, 0x0006], outputs=[], device_type=0x0051,
        model="PLUG-1", manufacturer="Weir Test", power_source=0x01,
    ),
}


def say(*words):
    print(*words, flush=True)


class Emulator:
    def __init__(self, link, state_path):
        self.link = link
        self.state_path = state_path
        self.nv = {}
        if os.path.exists(state_path):
            self.nv = {int(k): bytes.fromhex(v) for k, v in json.load(open(state_path)).items()}
        # Items a CC2652 has from the factory: the (aligned, 24-byte) network key item, which hosts
        # read to learn the NV alignment.
        self.nv.setdefault(NV_NWKKEY, bytes(24))
        self.endpoints = []  # AF_REGISTERed by the host
        self.master = None
        self.buf = b""
        self.permit_until = 0.0
        self.devices = {}  # nwk -> dict(kind, ieee, onoff)
        self.tsn = 0

    # --- the pty -------------------------------------------------------------------------
    def plug(self):
        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        # Keep the slave open on our side too, so the line does not hang up between opens.
        self.slave = slave
        self.master = master
        os.set_blocking(master, False)
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        os.symlink(name, self.link)
        asyncio.get_running_loop().add_reader(master, self.on_readable)

    def unplug(self):
        if self.master is None:
            return
        asyncio.get_running_loop().remove_reader(self.master)
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        os.close(self.master)
        os.close(self.slave)
        self.master = None
        self.buf = b""

    def save(self):
        tmp = self.state_path + ".tmp"
        json.dump({str(k): v.hex() for k, v in self.nv.items()}, open(tmp, "w"))
        os.replace(tmp, self.state_path)

    def send(self, cmd):
        if self.master is None:
            return
        data = frames.TransportFrame(cmd.to_frame()).serialize()
        # The pty buffer is small: wait for room rather than drop (a UART does not drop either).
        while data:
            try:
                n = os.write(self.master, data)
                data = data[n:]
            except BlockingIOError:
                select.select([], [self.master], [], 1.0)
            except OSError:
                return

    def send_raw(self, header, body):
        """A frame whose payload zigpy-znp has no (correct) schema for, built from zigpy types."""
        if self.master is None:
            return
        os.write(self.master, frames.TransportFrame(frames.GeneralFrame(header, body)).serialize())

    def on_readable(self):
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        self.buf += data
        while True:
            i = self.buf.find(b"\xfe")
            if i < 0:
                self.buf = b""  # stray bytes (e.g. the bootloader-skip byte 0xEF)
                return
            self.buf = self.buf[i:]
            try:
                frame, rest = frames.TransportFrame.deserialize(self.buf)
            except InvalidFrame as e:
                if "too short" in str(e):
                    return
                self.buf = self.buf[1:]
                continue
            except ValueError:
                return
            self.buf = rest
            cls = c.COMMANDS_BY_ID.get(frame.payload.header)
            if cls is None:
                say("frame unknown", frame.payload.header)
                continue
            req = cls.from_frame(frame.payload)
            say("frame", type(req).__qualname__)
            self.handle(req)

    # --- requests ------------------------------------------------------------------------
    def formed(self):
        return any(self.nv.get(i) == b"\x55" for i in HAS_CONFIGURED)

    def network_params(self):
        """PAN id, extended PAN id and channel as configured in NV by the host."""
        pan = int.from_bytes(self.nv.get(NV_PANID, b"\xff\xff")[:2], "little")
        mask = int.from_bytes(self.nv.get(NV_CHANLIST, (1 << 11).to_bytes(4, "little"))[:4], "little")
        channel = next((ch for ch in range(11, 27) if mask & (1 << ch)), 11)
        ext, _ = t.EUI64.deserialize(self.nv.get(NV_EXTPANID, bytes(COORD_IEEE.serialize()))[:8])
        return pan, ext, channel

    def write_network_state(self):
        """What Z-Stack keeps in NV after forming: the NIB and the active/alternate key info."""
        pan, ext, channel = self.network_params()
        mask = 1 << channel
        key = self.nv.get(NV_PRECFGKEY, bytes(16))[:16]
        desc = t.NwkKeyDesc(KeySeqNum=0, Key=t.KeyData(key))
        nib = t.NIB(
            SequenceNum=0, PassiveAckTimeout=5, MaxBroadcastRetries=2, MaxChildren=0, MaxDepth=20, MaxRouters=0,
            dummyNeighborTable=0, BroadcastDeliveryTime=30, ReportConstantCost=0, RouteDiscRetries=0, dummyRoutingTable=0,
            SecureAllFrames=1, SecurityLevel=5, SymLink=1, CapabilityFlags=143, TransactionPersistenceTime=7,
            nwkProtocolVersion=2, RouteDiscoveryTime=5, RouteExpiryTime=30, nwkDevAddress=0x0000, nwkLogicalChannel=channel,
            nwkCoordAddress=0x0000, nwkCoordExtAddress=t.EUI64.convert("00:00:00:00:00:00:00:00"), nwkPanId=pan,
            nwkState=t.NwkState.NWK_ROUTER, channelList=t.Channels(mask), beaconOrder=15, superFrameOrder=15, scanDuration=0,
            battLifeExt=0, allocatedRouterAddresses=1, allocatedEndDeviceAddresses=1, nodeDepth=0, extendedPANID=ext,
            nwkKeyLoaded=t.Bool.true, spare1=t.NwkKeyDesc(KeySeqNum=0, Key=t.KeyData(bytes(16))),
            spare2=t.NwkKeyDesc(KeySeqNum=0, Key=t.KeyData(bytes(16))), spare3=0, spare4=0, nwkLinkStatusPeriod=15,
            nwkRouterAgeLimit=3, nwkUseMultiCast=t.Bool.false, nwkIsConcentrator=t.Bool.true, nwkConcentratorDiscoveryTime=120,
            nwkConcentratorRadius=30, nwkAllFresh=1, nwkManagerAddr=0x0000, nwkTotalTransmissions=0, nwkUpdateId=0,
        )
        self.nv[NV_NIB] = nib.serialize(align=True)
        self.nv[NV_NWK_ACTIVE_KEY_INFO] = desc.serialize()
        self.nv[NV_NWK_ALTERN_KEY_INFO] = desc.serialize()
        self.save()

    def handle(self, req):
        if getattr(self, "muted", False):
            say("muted", type(req).__qualname__)
            return
        if isinstance(req, c.SYS.ResetReq.Req):
            self.endpoints = []  # AF registrations live in RAM
            self.send(c.SYS.ResetInd.Callback(Reason=t.ResetReason.PowerUp, TransportRev=2, ProductId=1, MajorRel=2, MinorRel=7, MaintRel=1))
        elif isinstance(req, c.SYS.Ping.Req):
            self.send(c.SYS.Ping.Rsp(Capabilities=t.MTCapabilities(0x0659)))
        elif isinstance(req, c.SYS.Version.Req):
            self.send(c.SYS.Version.Rsp(TransportRev=2, ProductId=1, MajorRel=2, MinorRel=7, MaintRel=1, CodeRevision=20230507, BootloaderBuildType=c.sys.BootloaderBuildType.NON_BOOTLOADER_BUILD, BootloaderRevision=0xFFFFFFFF))
        elif isinstance(req, c.SYS.OSALNVRead.Req):
            v = self.nv.get(req.Id)
            if v is None:
                self.send(c.SYS.OSALNVRead.Rsp(Status=t.Status.INVALID_PARAMETER, Value=t.ShortBytes(b"")))
            else:
                self.send(c.SYS.OSALNVRead.Rsp(Status=t.Status.SUCCESS, Value=t.ShortBytes(v[req.Offset:])))
        elif isinstance(req, c.SYS.OSALNVWrite.Req):
            self.nv[req.Id] = bytes(req.Value)
            self.save()
            self.send(c.SYS.OSALNVWrite.Rsp(Status=t.Status.SUCCESS))
        elif isinstance(req, c.SYS.OSALNVItemInit.Req):
            existed = req.Id in self.nv
            if not existed:
                self.nv[req.Id] = bytes(req.Value).ljust(req.ItemLen, b"\x00")[: req.ItemLen]
                self.save()
            # Z-Stack answers NV_ITEM_UNINIT (0x09) when it created the item, SUCCESS when it existed.
            self.send(c.SYS.OSALNVItemInit.Rsp(Status=t.Status.SUCCESS if existed else t.Status.NV_ITEM_UNINIT))
        elif isinstance(req, c.AppConfig.BDBSetChannel.Req):
            self.send(c.AppConfig.BDBSetChannel.Rsp(Status=t.Status.SUCCESS))
        elif isinstance(req, c.AppConfig.BDBStartCommissioning.Req):
            self.send(c.AppConfig.BDBStartCommissioning.Rsp(Status=t.Status.SUCCESS))
            if req.Mode == BDBCommissioningMode.NwkFormation:
                self.write_network_state()
                self.send(c.ZDO.StateChangeInd.Callback(State=t.DeviceState.StartingAsCoordinator))
                self.send(c.ZDO.StateChangeInd.Callback(State=t.DeviceState.StartedAsCoordinator))
                self.send(c.AppConfig.BDBCommissioningNotification.Callback(Status=BDBCommissioningStatus.Success, Mode=BDBCommissioningMode.NwkFormation, RemainingModes=BDBCommissioningMode.NONE))
                say("formed")
        elif isinstance(req, c.ZDO.StartupFromApp.Req):
            if self.formed():
                self.send(c.ZDO.StartupFromApp.Rsp(State=c.zdo.StartupState.RestoredNetworkState))
                self.send(c.ZDO.StateChangeInd.Callback(State=t.DeviceState.StartedAsCoordinator))
                say("started")
            else:
                self.send(c.ZDO.StartupFromApp.Rsp(State=c.zdo.StartupState.NotStarted))
        elif isinstance(req, c.AF.Register.Req):
            if any(r.Endpoint == req.Endpoint for r in self.endpoints):
                # APS_DUPLICATE_ENTRY, as Z-Stack answers an endpoint registered twice.
                self.send(c.AF.Register.Rsp(Status=t.Status.APS_DUPLICATE_ENTRY))
            else:
                self.endpoints.append(req)
                self.send(c.AF.Register.Rsp(Status=t.Status.SUCCESS))
        elif isinstance(req, c.SYS.OSALNVLength.Req):
            self.send(c.SYS.OSALNVLength.Rsp(ItemLen=len(self.nv.get(req.Id, b""))))
        elif isinstance(req, c.SYS.OSALNVReadExt.Req):
            v = self.nv.get(req.Id)
            if v is None:
                self.send(c.SYS.OSALNVReadExt.Rsp(Status=t.Status.INVALID_PARAMETER, Value=t.ShortBytes(b"")))
            else:
                self.send(c.SYS.OSALNVReadExt.Rsp(Status=t.Status.SUCCESS, Value=t.ShortBytes(v[req.Offset:req.Offset + 244])))
        elif isinstance(req, c.SYS.OSALNVWriteExt.Req):
            v = self.nv.get(req.Id)
            if v is None or req.Offset + len(req.Value) > len(v):
                # Z-Stack writes only within an item's length (items are created by ITEM_INIT).
                self.send(c.SYS.OSALNVWriteExt.Rsp(Status=t.Status.NV_ITEM_UNINIT if v is None else t.Status.INVALID_PARAMETER))
            else:
                self.nv[req.Id] = v[:req.Offset] + bytes(req.Value) + v[req.Offset + len(req.Value):]
                self.save()
                self.send(c.SYS.OSALNVWriteExt.Rsp(Status=t.Status.SUCCESS))
        elif isinstance(req, c.SYS.OSALNVDelete.Req):
            existed = self.nv.pop(req.Id, None) is not None
            self.save()
            self.send(c.SYS.OSALNVDelete.Rsp(Status=t.Status.SUCCESS if existed else t.Status.NV_ITEM_UNINIT))
        elif isinstance(req, c.SYS.NVLength.Req):
            # Z-Stack 3 extended NV tables (address manager, security, link keys): empty here.
            self.send(c.SYS.NVLength.Rsp(Length=0))
        elif isinstance(req, c.SYS.NVRead.Req):
            self.send(c.SYS.NVRead.Rsp(Status=t.Status.NV_ITEM_UNINIT, Value=t.ShortBytes(b"")))
        elif isinstance(req, c.SYS.GetExtAddr.Req):
            self.send(c.SYS.GetExtAddr.Rsp(ExtAddr=COORD_IEEE))
        elif isinstance(req, c.UTIL.LEDControl.Req):
            self.send(c.UTIL.LEDControl.Rsp(Status=t.Status.SUCCESS))
        elif isinstance(req, c.ZDO.ExtNwkInfo.Req):
            # Z-Stack's layout (MT_ZDO.c, MT_ZdoExtNwkInfo, 24 bytes from the NIB): short address,
            # device state, PAN id, parent address, extended PAN id, parent IEEE, channel (1 byte).
            # zigbee-herdsman reads it so; zigpy-znp's ExtNwkInfo.Rsp schema (no device state, a
            # 4-byte channel mask) does not match the firmware and zigpy-znp never sends this
            # request, so this one answer is assembled from zigpy types in the firmware's layout.
            if NV_NIB in self.nv:
                pan, ext, channel = self.network_params()
                body = (t.NWK(0x0000).serialize() + t.DeviceState.StartedAsCoordinator.serialize()
                        + t.uint16_t(pan).serialize() + t.NWK(0x0000).serialize()
                        + ext.serialize() + COORD_IEEE.serialize() + t.uint8_t(channel).serialize())
            else:
                body = (t.NWK(0xFFFE).serialize() + t.DeviceState.InitializedNotStarted.serialize()
                        + t.uint16_t(0xFFFF).serialize() + t.NWK(0xFFFE).serialize()
                        + bytes(8) + bytes(8) + t.uint8_t(0).serialize())
            self.send_raw(c.ZDO.ExtNwkInfo.Rsp.header, body)
        elif isinstance(req, c.ZDO.ExtFindGroup.Req):
            groups = getattr(self, "groups", set())
            # MT_ZdoExtFindGroup: status then the aps_Group_t (ID, name length, 16-byte name),
            # zeroed when the group is not there (status FAILURE).
            if (req.Endpoint, req.GroupId) in groups:
                self.send(c.ZDO.ExtFindGroup.Rsp(Group=t.Bytes(b"\x00" + req.GroupId.serialize() + bytes(17))))
            else:
                self.send(c.ZDO.ExtFindGroup.Rsp(Group=t.Bytes(b"\x01" + bytes(19))))
        elif isinstance(req, c.ZDO.ExtAddGroup.Req):
            self.groups = getattr(self, "groups", set()) | {(req.Endpoint, req.GroupId)}
            self.send(c.ZDO.ExtAddGroup.Rsp(Status=t.Status.SUCCESS))
        elif isinstance(req, c.UTIL.GetDeviceInfo.Req):
            self.send(c.UTIL.GetDeviceInfo.Rsp(Status=t.Status.SUCCESS, IEEE=COORD_IEEE, NWK=0x0000, DeviceType=t.DeviceTypeCapabilities(7), DeviceState=t.DeviceState.StartedAsCoordinator if self.formed() else t.DeviceState.InitializedNotStarted, AssociatedDevices=[]))
        elif isinstance(req, c.ZDO.MgmtPermitJoinReq.Req):
            self.send(c.ZDO.MgmtPermitJoinReq.Rsp(Status=t.Status.SUCCESS))
            self.permit_until = time.monotonic() + req.Duration
            self.send(c.ZDO.MgmtPermitJoinRsp.Callback(Src=0x0000, Status=t.ZDOStatus.SUCCESS))
            say("permit-join", req.Duration)
        elif isinstance(req, c.ZDO.NodeDescReq.Req):
            self.send(c.ZDO.NodeDescReq.Rsp(Status=t.Status.SUCCESS))
            d = self.devices.get(req.NWKAddrOfInterest)
            if d is None:
                return
            spec = DEVICES[d["kind"]]
            mac = zdo_t.NodeDescriptor.MACCapabilityFlags.AllocateAddress
            if spec["mains"]:
                mac |= zdo_t.NodeDescriptor.MACCapabilityFlags.MainsPowered | zdo_t.NodeDescriptor.MACCapabilityFlags.FullFunctionDevice | zdo_t.NodeDescriptor.MACCapabilityFlags.RxOnWhenIdle
            nd = c.zdo.NullableNodeDescriptor(logical_type=spec["logical"], complex_descriptor_available=0, user_descriptor_available=0, reserved=0, aps_flags=0, frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz, mac_capability_flags=mac, manufacturer_code=0x1234, maximum_buffer_size=82, maximum_incoming_transfer_size=82, server_mask=0, maximum_outgoing_transfer_size=82, descriptor_capability_field=zdo_t.NodeDescriptor.DescriptorCapability.NONE)
            self.send(c.ZDO.NodeDescRsp.Callback(Src=req.DstAddr, Status=t.ZDOStatus.SUCCESS, NWK=req.NWKAddrOfInterest, NodeDescriptor=nd))
        elif isinstance(req, c.ZDO.ActiveEpReq.Req):
            self.send(c.ZDO.ActiveEpReq.Rsp(Status=t.Status.SUCCESS))
            if req.NWKAddrOfInterest == 0x0000:
                # The coordinator itself: the endpoints the host registered.
                self.send(c.ZDO.ActiveEpRsp.Callback(Src=0x0000, Status=t.ZDOStatus.SUCCESS, NWK=0x0000, ActiveEndpoints=[r.Endpoint for r in self.endpoints]))
            elif req.NWKAddrOfInterest in self.devices:
                self.send(c.ZDO.ActiveEpRsp.Callback(Src=req.DstAddr, Status=t.ZDOStatus.SUCCESS, NWK=req.NWKAddrOfInterest, ActiveEndpoints=[1]))
        elif isinstance(req, c.ZDO.SimpleDescReq.Req):
            self.send(c.ZDO.SimpleDescReq.Rsp(Status=t.Status.SUCCESS))
            if req.NWKAddrOfInterest == 0x0000:
                # The coordinator: what the host registered on that endpoint.
                r = next((r for r in self.endpoints if r.Endpoint == req.Endpoint), None)
                if r is None:
                    self.send(c.ZDO.SimpleDescRsp.Callback(Src=0x0000, Status=t.ZDOStatus.NOT_ACTIVE, NWK=0x0000, SimpleDescriptor=zdo_t.SizePrefixedSimpleDescriptor()))
                else:
                    sd = zdo_t.SizePrefixedSimpleDescriptor(endpoint=r.Endpoint, profile=r.ProfileId, device_type=r.DeviceId, device_version=r.DeviceVersion, input_clusters=list(r.InputClusters), output_clusters=list(r.OutputClusters))
                    self.send(c.ZDO.SimpleDescRsp.Callback(Src=0x0000, Status=t.ZDOStatus.SUCCESS, NWK=0x0000, SimpleDescriptor=sd))
                return
            d = self.devices.get(req.NWKAddrOfInterest)
            if d is None:
                return
            spec = DEVICES[d["kind"]]
            sd = zdo_t.SizePrefixedSimpleDescriptor(endpoint=req.Endpoint, profile=0x0104, device_type=spec["device_type"], device_version=1, input_clusters=spec["inputs"], output_clusters=spec["outputs"])
            self.send(c.ZDO.SimpleDescRsp.Callback(Src=req.DstAddr, Status=t.ZDOStatus.SUCCESS, NWK=req.NWKAddrOfInterest, SimpleDescriptor=sd))
        elif isinstance(req, c.ZDO.BindReq.Req):
            self.send(c.ZDO.BindReq.Rsp(Status=t.Status.SUCCESS))
            d = self.devices.get(req.Dst)
            if d is None:
                return
            # The binding must point at the coordinator (UTIL_GET_DEVICE_INFO's IEEE), endpoint 1.
            ok = req.Address.addrmode == 0x03 and req.Address.ieee == COORD_IEEE and req.Address.endpoint == 1 and req.Src == d["ieee"]
            self.send(c.ZDO.BindRsp.Callback(Src=req.Dst, Status=t.ZDOStatus.SUCCESS if ok else t.ZDOStatus.INVALID_REQUEST))
            say("bind" if ok else "bind-wrong", f"0x{req.Dst:04x}", f"0x{req.ClusterId:04x}")
        elif isinstance(req, c.AF.DataRequest.Req):
            self.af_data(req)
        elif isinstance(req, c.ZDO.ExtRouteDisc.Req):
            self.send(c.ZDO.ExtRouteDisc.Rsp(Status=t.Status.SUCCESS))
        elif isinstance(req, c.AF.DataRequestExt.Req):
            dst = req.DstAddrModeAddress
            if dst.mode == t.AddrMode.NWK and dst.address in self.devices:
                from types import SimpleNamespace
                self.af_data(SimpleNamespace(DstAddr=dst.address, DstEndpoint=req.DstEndpoint, ClusterId=req.ClusterId, TSN=req.TSN, Data=req.Data))
            else:
                # Broadcast, group or unknown destination: sent, confirmed, nobody answers here.
                say("af-ext", str(dst.mode), f"0x{req.ClusterId:04x}")
                self.send(c.AF.DataRequestExt.Rsp(Status=t.Status.SUCCESS))
                self.send(c.AF.DataConfirm.Callback(Status=t.Status.SUCCESS, Endpoint=req.DstEndpoint, TSN=req.TSN))
        else:
            say("unhandled", type(req).__qualname__)
            if req.header.type == t.CommandType.SREQ:
                # Z-Stack answers a request it does not know with an RPC error (MT_RPC_ERR_COMMAND_ID),
                # never with silence.
                self.send(c.RPCError.CommandNotRecognized.Rsp(ErrorCode=c.rpc_error.ErrorCode.InvalidCommandId, RequestHeader=req.header))

    def af_data(self, req):
        d = self.devices.get(req.DstAddr)
        if d is None:
            self.send(c.AF.DataRequest.Rsp(Status=t.Status.SUCCESS))
            self.send(c.AF.DataConfirm.Callback(Status=t.Status.MAC_NO_ACK, Endpoint=req.DstEndpoint, TSN=req.TSN))
            return
        self.send(c.AF.DataRequest.Rsp(Status=t.Status.SUCCESS))
        self.send(c.AF.DataConfirm.Callback(Status=t.Status.SUCCESS, Endpoint=req.DstEndpoint, TSN=req.TSN))
        hdr, payload = f.ZCLHeader.deserialize(bytes(req.Data))
        spec = DEVICES[d["kind"]]
        if hdr.frame_control.is_general and hdr.command_id == f.GeneralCommand.Read_Attributes and req.ClusterId == 0x0000:
            ids, _ = f.GENERAL_COMMANDS[f.GeneralCommand.Read_Attributes].schema.deserialize(payload)
            say("read-basic", f"0x{req.DstAddr:04x}", ",".join(f"0x{a:04x}" for a in ids.attribute_ids))
            recs = []
            for a in ids.attribute_ids:
                if a == 0x0004:
                    v = f.TypeValue(0x42, zt.CharacterString(spec["manufacturer"]))
                elif a == 0x0005:
                    v = f.TypeValue(0x42, zt.CharacterString(spec["model"]))
                elif a == 0x0007:
                    v = f.TypeValue(0x30, zt.enum8(spec["power_source"]))
                else:
                    recs.append(f.ReadAttributeRecord(attrid=a, status=f.Status.UNSUPPORTED_ATTRIBUTE))
                    continue
                recs.append(f.ReadAttributeRecord(attrid=a, status=f.Status.SUCCESS, value=v))
            rh = f.ZCLHeader.general(hdr.tsn, f.GeneralCommand.Read_Attributes_rsp, direction=f.Direction.Server_to_Client)
            rh.frame_control = rh.frame_control.replace(disable_default_response=True)
            body = b"".join(r.serialize() for r in recs)
            self.incoming(req.DstAddr, 0x0000, rh.serialize() + body)
        elif hdr.frame_control.is_general and hdr.command_id == f.GeneralCommand.Read_Attributes and req.ClusterId == 0x0500:
            ids, _ = f.GENERAL_COMMANDS[f.GeneralCommand.Read_Attributes].schema.deserialize(payload)
            recs = []
            for a in ids.attribute_ids:
                if a == 0x0001 and "zone_type" in spec:
                    v = f.TypeValue(0x31, zt.enum16(int(spec["zone_type"])))
                else:
                    recs.append(f.ReadAttributeRecord(attrid=a, status=f.Status.UNSUPPORTED_ATTRIBUTE))
                    continue
                recs.append(f.ReadAttributeRecord(attrid=a, status=f.Status.SUCCESS, value=v))
            rh = f.ZCLHeader.general(hdr.tsn, f.GeneralCommand.Read_Attributes_rsp, direction=f.Direction.Server_to_Client)
            rh.frame_control = rh.frame_control.replace(disable_default_response=True)
            body = b"".join(r.serialize() for r in recs)
            self.incoming(req.DstAddr, 0x0500, rh.serialize() + body)
        elif hdr.frame_control.is_general and hdr.command_id == f.GeneralCommand.Read_Attributes and req.ClusterId in spec.get("attrs", {}):
            ids, _ = f.GENERAL_COMMANDS[f.GeneralCommand.Read_Attributes].schema.deserialize(payload)
            types = {0x21: zt.uint16_t, 0x22: zt.uint24_t}
            table = spec["attrs"][req.ClusterId]
            recs = []
            for a in ids.attribute_ids:
                if a in table:
                    ty, val = table[a]
                    recs.append(f.ReadAttributeRecord(attrid=a, status=f.Status.SUCCESS, value=f.TypeValue(ty, types[ty](val))))
                else:
                    recs.append(f.ReadAttributeRecord(attrid=a, status=f.Status.UNSUPPORTED_ATTRIBUTE))
            rh = f.ZCLHeader.general(hdr.tsn, f.GeneralCommand.Read_Attributes_rsp, direction=f.Direction.Server_to_Client)
            rh.frame_control = rh.frame_control.replace(disable_default_response=True)
            self.incoming(req.DstAddr, req.ClusterId, rh.serialize() + b"".join(r.serialize() for r in recs))
        elif hdr.frame_control.is_general and hdr.command_id == f.GeneralCommand.Write_Attributes and req.ClusterId == 0x0500:
            recs, _ = f.GENERAL_COMMANDS[f.GeneralCommand.Write_Attributes].schema.deserialize(payload)
            ok = False
            for r in recs.attributes:
                if r.attrid == 0x0010 and r.value.type == 0xF0:
                    cie, _ = zt.EUI64.deserialize(r.value.value.serialize() if hasattr(r.value.value, "serialize") else bytes(r.value.value))
                    ok = cie == COORD_IEEE
            rh = f.ZCLHeader.general(hdr.tsn, f.GeneralCommand.Write_Attributes_rsp, direction=f.Direction.Server_to_Client)
            rh.frame_control = rh.frame_control.replace(disable_default_response=True)
            status = f.Status.SUCCESS if ok else f.Status.INVALID_VALUE
            body = f.GENERAL_COMMANDS[f.GeneralCommand.Write_Attributes_rsp].schema(status_records=f.WriteAttributesResponse([f.WriteAttributesStatusRecord(status=status)])).serialize()
            self.incoming(req.DstAddr, 0x0500, rh.serialize() + body)
            say("cie-written" if ok else "cie-wrong", f"0x{req.DstAddr:04x}")
            if ok:
                # The zone asks to be enrolled (ZCL 8.2.2.4.2), as a real sensor does next.
                self.tsn = (self.tsn + 1) & 0xFF
                eh = f.ZCLHeader.cluster(self.tsn, 0x01, direction=f.Direction.Server_to_Client)
                body = IasZone.client_commands[0x01].schema(zone_type=spec["zone_type"], manufacturer_code=0x1234).serialize()
                self.incoming(req.DstAddr, 0x0500, eh.serialize() + body)
        elif req.ClusterId == 0x0500 and hdr.frame_control.is_cluster and hdr.command_id == 0x00:
            r, _ = IasZone.server_commands[0x00].schema.deserialize(payload)
            d["zone_id"] = r.zone_id
            say("enrolled", f"0x{req.DstAddr:04x}", int(r.enroll_response_code), r.zone_id)
        elif hdr.frame_control.is_general and hdr.command_id == f.GeneralCommand.Configure_Reporting:
            recs, _ = f.GENERAL_COMMANDS[f.GeneralCommand.Configure_Reporting].schema.deserialize(payload)
            for r in recs.config_records:
                change = getattr(r, "reportable_change", None)
                say("configure-reporting", f"0x{req.DstAddr:04x}", f"0x{req.ClusterId:04x}", f"0x{r.attrid:04x}", f"0x{r.datatype:02x}", r.min_interval, r.max_interval, "-" if change is None else change)
            rh = f.ZCLHeader.general(hdr.tsn, f.GeneralCommand.Configure_Reporting_rsp, direction=f.Direction.Server_to_Client)
            rh.frame_control = rh.frame_control.replace(disable_default_response=True)
            body = f.GENERAL_COMMANDS[f.GeneralCommand.Configure_Reporting_rsp].schema(status_records=f.ConfigureReportingResponse([f.ConfigureReportingResponseRecord(status=f.Status.SUCCESS)])).serialize()
            self.incoming(req.DstAddr, req.ClusterId, rh.serialize() + body)
        elif req.ClusterId == 0x0006 and hdr.frame_control.is_cluster and hdr.command_id in (0, 1, 2):
            d["onoff"] = {0: 0, 1: 1, 2: 1 - d["onoff"]}[hdr.command_id]
            say("onoff", f"0x{req.DstAddr:04x}", d["onoff"])
            if not hdr.frame_control.disable_default_response:
                rh = f.ZCLHeader.general(hdr.tsn, f.GeneralCommand.Default_Response, direction=f.Direction.Server_to_Client)
                rh.frame_control = rh.frame_control.replace(disable_default_response=True)
                body = f.GENERAL_COMMANDS[f.GeneralCommand.Default_Response].schema(command_id=hdr.command_id, status=f.Status.SUCCESS).serialize()
                self.incoming(req.DstAddr, 0x0006, rh.serialize() + body)
            self.report(req.DstAddr, "onoff", d["onoff"])
        elif req.ClusterId == 0x0008 and hdr.frame_control.is_cluster and hdr.command_id == 0x04:
            from zigpy.zcl.clusters.general import LevelControl
            r, _ = LevelControl.server_commands[0x04].schema.deserialize(payload)
            d["level"] = r.level
            say("level", f"0x{req.DstAddr:04x}", r.level)
            if not hdr.frame_control.disable_default_response:
                rh = f.ZCLHeader.general(hdr.tsn, f.GeneralCommand.Default_Response, direction=f.Direction.Server_to_Client)
                rh.frame_control = rh.frame_control.replace(disable_default_response=True)
                body = f.GENERAL_COMMANDS[f.GeneralCommand.Default_Response].schema(command_id=hdr.command_id, status=f.Status.SUCCESS).serialize()
                self.incoming(req.DstAddr, 0x0008, rh.serialize() + body)
            self.report(req.DstAddr, "level", r.level)
        else:
            say("af-unhandled", hex(req.ClusterId), hdr.command_id)

    def incoming(self, nwk, cluster, data, lqi=120):
        self.send(c.AF.IncomingMsg.Callback(GroupId=0, ClusterId=cluster, SrcAddr=nwk, SrcEndpoint=1, DstEndpoint=1, WasBroadcast=t.Bool.false, LQI=lqi, SecurityUse=t.Bool.false, TimeStamp=int(time.time()) & 0xFFFFFFFF, TSN=0, Data=t.ShortBytes(data), MacSrcAddr=nwk, MsgResultRadius=30))

    def report(self, nwk, what, value):
        self.tsn = (self.tsn + 1) & 0xFF
        hdr = f.ZCLHeader.general(self.tsn, f.GeneralCommand.Report_Attributes, direction=f.Direction.Server_to_Client)
        hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
        attr = 0x0000
        if what == "temperature":
            cluster, tv = 0x0402, f.TypeValue(0x29, zt.int16s(round(float(value) * 100)))
        elif what == "humidity":
            cluster, tv = 0x0405, f.TypeValue(0x21, zt.uint16_t(round(float(value) * 100)))
        elif what == "onoff":
            cluster, tv = 0x0006, f.TypeValue(0x10, zt.Bool(int(value)))
        elif what == "power":  # raw ActivePower (int16)
            cluster, tv = 0x0B04, f.TypeValue(0x29, zt.int16s(int(value)))
            attr = 0x050B
        elif what == "voltage":  # raw RMSVoltage (uint16)
            cluster, tv = 0x0B04, f.TypeValue(0x21, zt.uint16_t(int(value)))
            attr = 0x0505
        elif what == "energy":  # raw CurrentSummationDelivered (uint48)
            cluster, tv = 0x0702, f.TypeValue(0x25, zt.uint48_t(int(value)))
        elif what == "level":
            cluster, tv = 0x0008, f.TypeValue(0x20, zt.uint8_t(int(value)))
        else:
            say("error unknown report", what)
            return
        self.incoming(nwk, cluster, hdr.serialize() + f.Attribute(attr, tv).serialize())

    # --- control -------------------------------------------------------------------------
    def control(self, line):
        w = line.split()
        if not w:
            return
        if w[0] == "join":
            ieee, nwk, kind = t.EUI64.convert(w[1]), int(w[2], 16), w[3]
            if time.monotonic() > self.permit_until:
                say("join-refused", w[1])
                return
            self.devices[nwk] = dict(kind=kind, ieee=ieee, onoff=0)
            caps = c.zdo.MACCapabilities(0x8E if DEVICES[kind]["mains"] else 0x80)
            # As Z-Stack does: the trust center indication when the device is let in (joined
            # directly to the coordinator), then the device's own announcement.
            self.send(c.ZDO.TCDevInd.Callback(SrcNwk=nwk, SrcIEEE=ieee, ParentNwk=0x0000))
            self.send(c.ZDO.EndDeviceAnnceInd.Callback(Src=nwk, NWK=nwk, IEEE=ieee, Capabilities=caps))
            say("joined", w[1])
        elif w[0] == "known":
            # A device paired before this emulator process started (NV holds it in a real stick).
            self.devices[int(w[2], 16)] = dict(kind=w[3], ieee=t.EUI64.convert(w[1]), onoff=0)
            say("known", w[1])
        elif w[0] == "zone":
            # zone <nwk> <status>: a Zone Status Change Notification (bit 0 alarm 1, bit 2 tamper,
            # bit 3 battery low).
            nwk = int(w[1], 16)
            self.tsn = (self.tsn + 1) & 0xFF
            zh = f.ZCLHeader.cluster(self.tsn, 0x00, direction=f.Direction.Server_to_Client)
            zh.frame_control = zh.frame_control.replace(disable_default_response=True)
            body = IasZone.client_commands[0x00].schema(zone_status=IasZone.ZoneStatus(int(w[2], 0)), extended_status=zt.bitmap8(0), zone_id=self.devices[nwk].get("zone_id", 0xFF), delay=0).serialize()
            self.incoming(nwk, 0x0500, zh.serialize() + body)
        elif w[0] == "xiaomi":
            nwk, mv, temp, hum, pa = int(w[1], 16), int(w[2]), float(w[3]), float(w[4]), int(w[5])
            items = [
                (1, f.TypeValue(0x21, zt.uint16_t(mv))), (3, f.TypeValue(0x28, zt.int8s(round(temp)))),
                (4, f.TypeValue(0x21, zt.uint16_t(0x13A8))), (5, f.TypeValue(0x21, zt.uint16_t(9))),
                (10, f.TypeValue(0x21, zt.uint16_t(0))),
                (100, f.TypeValue(0x29, zt.int16s(round(temp * 100)))),
                (101, f.TypeValue(0x21, zt.uint16_t(round(hum * 100)))),
                (102, f.TypeValue(0x2B, zt.int32s(pa))),
            ]
            content = b"".join(zt.uint8_t(tag).serialize() + tv.serialize() for tag, tv in items)
            self.tsn = (self.tsn + 1) & 0xFF
            hdr = f.ZCLHeader.general(self.tsn, f.GeneralCommand.Report_Attributes, manufacturer=0x115F, direction=f.Direction.Server_to_Client)
            hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
            # Raw bytes labelled "character string", as the devices send them.
            rec = f.Attribute(0xFF01, f.TypeValue(0x42, zt.LVBytes(content)))
            data = hdr.serialize() + rec.serialize()
            assert data.endswith(content)
            self.incoming(nwk, 0x0000, data)
        elif w[0] == "drop":
            # The device is gone without a word (unplugged): requests to it are not acknowledged.
            self.devices.pop(int(w[1], 16), None)
            say("dropped", w[1])
        elif w[0] == "leave":
            d = self.devices.pop(int(w[1], 16))
            self.send(c.ZDO.LeaveInd.Callback(NWK=int(w[1], 16), IEEE=d["ieee"], Request=t.Bool.false, Remove=t.Bool.false, Rejoin=t.Bool.false))
            say("left", w[1])
        elif w[0] == "report":
            self.report(int(w[1], 16), w[2], w[3])
        elif w[0] == "flood":
            # flood <nwk> <n>: n temperature reports back to back (the benchmark).
            nwk, n = int(w[1], 16), int(w[2])
            for i in range(n):
                self.report(nwk, "temperature", 20 + (i % 100) / 100)
            say("flooded", n)
        elif w[0] == "joinmany":
            # joinmany <n>: n temperature sensors announce themselves (the memory figure).
            for i in range(int(w[1])):
                nwk = 0x1000 + i
                ieee = t.EUI64.convert(f"00:12:4b:00:00:01:{i >> 8:02x}:{i & 0xFF:02x}")
                self.devices[nwk] = dict(kind="temp", ieee=ieee, onoff=0)
                self.send(c.ZDO.EndDeviceAnnceInd.Callback(Src=nwk, NWK=nwk, IEEE=ieee, Capabilities=c.zdo.MACCapabilities(0x80)))
            say("joinedmany", w[1])
        elif w[0] == "mute":
            self.muted = True  # wedged: requests are read and never answered
            say("mute")
        elif w[0] == "unmute":
            self.muted = False
            say("unmute")
        elif w[0] == "vanish":
            self.unplug()
            say("vanished")
        elif w[0] == "return":
            self.endpoints = []  # plugged back: powered up afresh
            self.plug()
            say("returned")
        elif w[0] == "reset":
            # A watchdog reset: the ZNP restarts from NV, not joined until started again.
            self.permit_until = 0.0
            self.endpoints = []
            self.send(c.SYS.ResetInd.Callback(Reason=t.ResetReason.Watchdog, TransportRev=2, ProductId=1, MajorRel=2, MinorRel=7, MaintRel=1))
            say("reset")
        elif w[0] == "garbage":
            os.write(self.master, b"\x00\x13\x37\xfe\x03\x45\xc0\x09\x00\x00")
            say("garbage")
        elif w[0] == "quit":
            self.unplug()
            sys.exit(0)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--link", required=True)
    ap.add_argument("--state", required=True)
    a = ap.parse_args()
    emu = Emulator(a.link, a.state)
    emu.plug()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    say("ready")
    while True:
        line = await reader.readline()
        if not line:
            emu.unplug()
            return
        emu.control(line.decode())


if __name__ == "__main__":
    asyncio.run(main())
