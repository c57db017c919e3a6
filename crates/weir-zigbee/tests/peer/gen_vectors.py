#!/usr/bin/env python3
"""Print MT frames encoded by zigpy-znp (1.1.1), one per line, for weir-zigbee's codec tests.

Every frame is built from zigpy-znp's own command definitions (`zigpy_znp.commands`) and
serialised by `zigpy_znp.frames.TransportFrame`, so the layouts come from an implementation
others wrote. Output (tests/vectors/zigpy_znp.txt):

    <name> <cmd0 hex> <cmd1 hex> <payload hex> <whole frame hex>

Regenerate: target/zigbee-venv/bin/python crates/weir-zigbee/tests/peer/gen_vectors.py \
    > crates/weir-zigbee/tests/vectors/zigpy_znp.txt
"""
import zigpy.types as zt
import zigpy.zcl.foundation as f
import zigpy_znp.commands as c
import zigpy_znp.frames as frames
import zigpy_znp.types as t
from zigpy_znp.commands.app_config import BDBCommissioningMode, BDBCommissioningStatus

IEEE = t.EUI64.convert("00:12:4b:00:1c:aa:bb:01")


def zcl_report(tsn, attr, typ, value):
    hdr = f.ZCLHeader.general(tsn, f.GeneralCommand.Report_Attributes, direction=f.Direction.Server_to_Client)
    hdr.frame_control = hdr.frame_control.replace(disable_default_response=True)
    rec = f.Attribute(attr, f.TypeValue(typ, value))
    return hdr.serialize() + rec.serialize()


CMDS = [
    ("sys_reset_req", c.SYS.ResetReq.Req(Type=t.ResetType.Soft)),
    ("sys_reset_ind", c.SYS.ResetInd.Callback(Reason=t.ResetReason.PowerUp, TransportRev=2, ProductId=1, MajorRel=2, MinorRel=7, MaintRel=1)),
    ("sys_ping_req", c.SYS.Ping.Req()),
    ("sys_ping_rsp", c.SYS.Ping.Rsp(Capabilities=t.MTCapabilities(0x0659))),
    ("sys_version_req", c.SYS.Version.Req()),
    ("sys_version_rsp", c.SYS.Version.Rsp(TransportRev=2, ProductId=1, MajorRel=2, MinorRel=7, MaintRel=1, CodeRevision=20230507, BootloaderBuildType=c.sys.BootloaderBuildType.NON_BOOTLOADER_BUILD, BootloaderRevision=0xFFFFFFFF)),
    ("sys_nv_read_req", c.SYS.OSALNVRead.Req(Id=0x0F00, Offset=0)),
    ("sys_nv_read_rsp", c.SYS.OSALNVRead.Rsp(Status=t.Status.SUCCESS, Value=t.ShortBytes(b"\x55"))),
    ("sys_nv_read_rsp_missing", c.SYS.OSALNVRead.Rsp(Status=t.Status.INVALID_PARAMETER, Value=t.ShortBytes(b""))),
    ("sys_nv_write_req", c.SYS.OSALNVWrite.Req(Id=0x0083, Offset=0, Value=t.ShortBytes(b"\x62\x1a"))),
    ("sys_nv_item_init_req", c.SYS.OSALNVItemInit.Req(Id=0x0F00, ItemLen=1, Value=t.ShortBytes(b"\x55"))),
    ("zdo_startup_from_app_req", c.ZDO.StartupFromApp.Req(StartDelay=100)),
    ("zdo_startup_from_app_rsp", c.ZDO.StartupFromApp.Rsp(State=c.zdo.StartupState.RestoredNetworkState)),
    ("zdo_state_change_ind", c.ZDO.StateChangeInd.Callback(State=t.DeviceState.StartedAsCoordinator)),
    ("bdb_start_commissioning_req", c.AppConfig.BDBStartCommissioning.Req(Mode=BDBCommissioningMode.NwkFormation)),
    ("bdb_commissioning_notification", c.AppConfig.BDBCommissioningNotification.Callback(Status=BDBCommissioningStatus.Success, Mode=BDBCommissioningMode.NwkFormation, RemainingModes=BDBCommissioningMode.NONE)),
    ("af_register_req", c.AF.Register.Req(Endpoint=1, ProfileId=0x0104, DeviceId=0x0005, DeviceVersion=0, LatencyReq=c.af.LatencyReq.NoLatencyReqs, InputClusters=[0x0000, 0x0006], OutputClusters=[0x0006])),
    ("af_register_rsp", c.AF.Register.Rsp(Status=t.Status.SUCCESS)),
    ("af_data_request_req", c.AF.DataRequest.Req(DstAddr=0x4a21, DstEndpoint=1, SrcEndpoint=1, ClusterId=0x0006, TSN=7, Options=c.af.TransmitOptions.ACK_REQUEST, Radius=30, Data=t.ShortBytes(b"\x01\x07\x01"))),
    ("af_data_request_rsp", c.AF.DataRequest.Rsp(Status=t.Status.SUCCESS)),
    ("af_data_confirm", c.AF.DataConfirm.Callback(Status=t.Status.SUCCESS, Endpoint=1, TSN=7)),
    ("af_data_confirm_nwk_no_route", c.AF.DataConfirm.Callback(Status=t.Status.NWK_NO_ROUTE, Endpoint=1, TSN=8)),
    ("af_incoming_msg_temp", c.AF.IncomingMsg.Callback(GroupId=0, ClusterId=0x0402, SrcAddr=0x1234, SrcEndpoint=1, DstEndpoint=1, WasBroadcast=t.Bool.false, LQI=110, SecurityUse=t.Bool.false, TimeStamp=123456, TSN=0, Data=t.ShortBytes(zcl_report(0x2A, 0x0000, 0x29, zt.int16s(2150))), MacSrcAddr=0x1234, MsgResultRadius=29)),
    ("af_incoming_msg_onoff", c.AF.IncomingMsg.Callback(GroupId=0, ClusterId=0x0006, SrcAddr=0x4a21, SrcEndpoint=1, DstEndpoint=1, WasBroadcast=t.Bool.false, LQI=200, SecurityUse=t.Bool.false, TimeStamp=0, TSN=0, Data=t.ShortBytes(zcl_report(0x05, 0x0000, 0x10, zt.Bool.true)), MacSrcAddr=0x4a21, MsgResultRadius=30)),
    ("zdo_end_device_annce_ind", c.ZDO.EndDeviceAnnceInd.Callback(Src=0x1234, NWK=0x1234, IEEE=IEEE, Capabilities=c.zdo.MACCapabilities(0x80))),
    ("zdo_node_desc_req", c.ZDO.NodeDescReq.Req(DstAddr=0x1234, NWKAddrOfInterest=0x1234)),
    ("zdo_active_ep_req", c.ZDO.ActiveEpReq.Req(DstAddr=0x1234, NWKAddrOfInterest=0x1234)),
    ("zdo_active_ep_rsp", c.ZDO.ActiveEpRsp.Callback(Src=0x1234, Status=t.ZDOStatus.SUCCESS, NWK=0x1234, ActiveEndpoints=[1, 2])),
    ("zdo_simple_desc_req", c.ZDO.SimpleDescReq.Req(DstAddr=0x1234, NWKAddrOfInterest=0x1234, Endpoint=1)),
    ("zdo_mgmt_permit_join_req", c.ZDO.MgmtPermitJoinReq.Req(AddrMode=t.AddrMode.NWK, Dst=0x0000, Duration=60, TCSignificance=1)),
    ("zdo_leave_ind", c.ZDO.LeaveInd.Callback(NWK=0x1234, IEEE=IEEE, Request=t.Bool.false, Remove=t.Bool.false, Rejoin=t.Bool.false)),
    ("util_get_device_info_req", c.UTIL.GetDeviceInfo.Req()),
]

for name, cmd in CMDS:
    frame = cmd.to_frame()
    wire = frames.TransportFrame(frame).serialize()
    h = frame.header
    print(name, f"{h.cmd0:02x}", f"{h.id:02x}", frame.data.hex() or "-", wire.hex())
