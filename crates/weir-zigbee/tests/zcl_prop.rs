//! Property tests of the ZCL decoders (the entry points a fuzz target calls too): the frame header,
//! attribute records of reports and read responses, the IAS zone status, the scaled decoding and
//! the Xiaomi 0xFF01 tagged values. Encoded values come back as they went in; arbitrary bytes
//! never panic and never read past the input.

use proptest::prelude::*;
use weir_zigbee::xiaomi;
use weir_zigbee::zcl::{self, AttrValue, ZclFrame};

/// A value of a ZCL data type (§2.6.2) with its encoding, built independently of the decoder.
fn typed_value() -> impl Strategy<Value = (u8, AttrValue, Vec<u8>)> {
    prop_oneof![
        any::<bool>().prop_map(|b| (0x10, AttrValue::Bool(b), vec![b as u8])),
        // uint8…uint64 (0x20…0x27), bitmaps (0x18…0x1F), data (0x08…0x0F).
        (
            0usize..8,
            any::<u64>(),
            prop::sample::select(vec![0x08u8, 0x18, 0x20])
        )
            .prop_map(|(n, x, base)| {
                let len = n + 1;
                let x = if len == 8 {
                    x
                } else {
                    x & ((1u64 << (8 * len)) - 1)
                };
                (
                    base + n as u8,
                    AttrValue::Uint(x),
                    x.to_le_bytes()[..len].to_vec(),
                )
            }),
        // int8…int64 (0x28…0x2F).
        (0usize..8, any::<i64>()).prop_map(|(n, x)| {
            let len = n + 1;
            let shift = 64 - 8 * len as u32;
            let x = (x << shift) >> shift;
            (
                0x28 + n as u8,
                AttrValue::Int(x),
                x.to_le_bytes()[..len].to_vec(),
            )
        }),
        any::<f32>()
            .prop_filter("not NaN", |f| !f.is_nan())
            .prop_map(|f| (0x39, AttrValue::Float(f as f64), f.to_le_bytes().to_vec())),
        any::<f64>()
            .prop_filter("not NaN", |f| !f.is_nan())
            .prop_map(|f| (0x3A, AttrValue::Float(f), f.to_le_bytes().to_vec())),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
            let mut e = vec![b.len() as u8];
            e.extend_from_slice(&b);
            (0x41, AttrValue::Bytes(b), e)
        }),
        "[a-zA-Z0-9 ._-]{0,30}".prop_map(|s| {
            let mut e = vec![s.len() as u8];
            e.extend_from_slice(s.as_bytes());
            (0x42, AttrValue::Text(s), e)
        }),
    ]
}

proptest! {
    #[test]
    fn frame_header_round_trips(
        fc in any::<u8>(),
        manufacturer in any::<u16>(),
        tsn in any::<u8>(),
        command in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..60),
    ) {
        let mut wire = vec![fc];
        if fc & zcl::FC_MANUFACTURER_SPECIFIC != 0 {
            wire.extend_from_slice(&manufacturer.to_le_bytes());
        }
        wire.extend_from_slice(&[tsn, command]);
        wire.extend_from_slice(&payload);
        let z = ZclFrame::parse(&wire).unwrap();
        prop_assert_eq!(z.frame_control, fc);
        prop_assert_eq!(z.manufacturer, (fc & zcl::FC_MANUFACTURER_SPECIFIC != 0).then_some(manufacturer));
        prop_assert_eq!((z.tsn, z.command), (tsn, command));
        prop_assert_eq!(z.payload, payload);
        // Any prefix shorter than the header is refused, not misread.
        let header = if fc & zcl::FC_MANUFACTURER_SPECIFIC != 0 { 5 } else { 3 };
        prop_assert!(ZclFrame::parse(&wire[..header - 1]).is_none());
    }

    #[test]
    fn report_and_read_response_records_round_trip(
        recs in proptest::collection::vec((any::<u16>(), typed_value()), 0..8),
        failed in proptest::collection::vec((any::<u16>(), 1u8..=255), 0..3),
    ) {
        let mut report = Vec::new();
        let mut rsp = Vec::new();
        for (attr, (ty, _, enc)) in &recs {
            report.extend_from_slice(&attr.to_le_bytes());
            report.push(*ty);
            report.extend_from_slice(enc);
            rsp.extend_from_slice(&attr.to_le_bytes());
            rsp.push(0x00);
            rsp.push(*ty);
            rsp.extend_from_slice(enc);
        }
        // Unsuccessful read records (`id, status`) carry no value and are skipped.
        for (attr, status) in &failed {
            rsp.extend_from_slice(&attr.to_le_bytes());
            rsp.push(*status);
        }
        let want: Vec<(u16, AttrValue)> = recs.iter().map(|(a, (_, v, _))| (*a, v.clone())).collect();
        let (got, cut) = zcl::parse_report(&report);
        prop_assert!(!cut);
        prop_assert_eq!(got.into_iter().map(|r| (r.attr, r.value)).collect::<Vec<_>>(), want.clone());
        let (got, cut) = zcl::parse_read_rsp(&rsp);
        prop_assert!(!cut);
        prop_assert_eq!(got.into_iter().map(|r| (r.attr, r.value)).collect::<Vec<_>>(), want);
    }

    #[test]
    fn a_truncated_report_yields_the_records_before_the_cut(
        recs in proptest::collection::vec((any::<u16>(), typed_value()), 1..6),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let mut report = Vec::new();
        let mut ends = Vec::new();
        for (attr, (ty, _, enc)) in &recs {
            report.extend_from_slice(&attr.to_le_bytes());
            report.push(*ty);
            report.extend_from_slice(enc);
            ends.push(report.len());
        }
        let at = cut_at.index(report.len());
        let (got, _) = zcl::parse_report(&report[..at]);
        let whole = ends.iter().filter(|e| **e <= at).count();
        prop_assert_eq!(got.len(), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..120), cluster in prop::sample::select(vec![
        0x0000u16, 0x0001, 0x0006, 0x0008, 0x0400, 0x0402, 0x0403, 0x0405, 0x0406, 0x0408, 0x0500, 0x0702, 0x0B04, 0xFC00,
    ])) {
        if let Some(z) = ZclFrame::parse(&data) {
            prop_assert!(z.payload.len() <= data.len());
            let (recs, _) = zcl::parse_report(&z.payload);
            let scales = zcl::Scales::new();
            for r in &recs {
                let _ = zcl::decode_scaled(cluster, r.attr, &r.value, &scales);
            }
            let (recs, _) = zcl::parse_read_rsp(&z.payload);
            prop_assert!(recs.len() <= z.payload.len() / 4 + 1);
            let _ = zcl::configure_reporting_failure(&z.payload);
            if let Some(tlv) = xiaomi::find_ff01(&z.payload) {
                let (items, _) = xiaomi::parse_tlv(tlv);
                let _ = xiaomi::decode(Some("lumi.weather"), &items);
            }
        }
        for ty in [data.first().copied().unwrap_or(0), 0x42, 0x41, 0x3A, 0x27] {
            if let Some((_, n)) = zcl::parse_value(ty, data.get(1..).unwrap_or_default()) {
                prop_assert!(n < data.len().max(1));
            }
        }
        let (items, _) = xiaomi::parse_tlv(&data);
        let _ = xiaomi::decode(Some("lumi.plug"), &items);
        let status = u16::from_le_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]);
        let _ = zcl::decode_zone_status(Some(0x0015), status);
    }

    #[test]
    fn xiaomi_tagged_values_round_trip(items in proptest::collection::vec((any::<u8>(), typed_value()), 0..10), stray_nul in any::<bool>()) {
        let mut content = Vec::new();
        for (tag, (ty, _, enc)) in &items {
            content.push(*tag);
            content.push(*ty);
            content.extend_from_slice(enc);
        }
        if stray_nul {
            content.push(0);
        }
        // In a report, after another attribute, as the devices send it.
        let mut report = vec![0x05, 0x00, 0x42, 3, b'a', b'b', b'c', 0x01, 0xFF, 0x42, content.len() as u8];
        report.extend_from_slice(&content);
        if content.len() <= 255 {
            let tlv = xiaomi::find_ff01(&report).unwrap();
            prop_assert_eq!(tlv, &content[..]);
            let (got, cut) = xiaomi::parse_tlv(tlv);
            prop_assert!(!cut);
            let want: Vec<(u8, AttrValue)> = items.iter().map(|(t, (_, v, _))| (*t, v.clone())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
