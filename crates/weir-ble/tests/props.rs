//! Decoder limits: no input panics; wrong lengths are errors (counted by the source), never
//! readings.

use proptest::prelude::*;
use weir_ble::decode::{self, bthome, pvvx, ruuvi, DecodeError};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn no_decoder_panics(data in proptest::collection::vec(any::<u8>(), 0..64),
                         key in any::<[u8; 16]>(), with_key in any::<bool>(),
                         last in proptest::option::of(any::<u32>())) {
        let mut ks = bthome::KeyState { key: with_key.then_some(key), last_counter: last };
        let _ = decode::service_data(bthome::UUID16, &data, [1, 2, 3, 4, 5, 6], &mut ks);
        let _ = decode::service_data(pvvx::UUID16, &data, [0; 6], &mut ks);
        let _ = decode::service_data(0xFEAA, &data, [0; 6], &mut ks);
        let _ = decode::manufacturer_data(ruuvi::COMPANY_ID, &data);
        let _ = decode::manufacturer_data(0x004C, &data);
    }

    #[test]
    fn bthome_plain_objects_never_panic(objs in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut data = vec![0x40];
        data.extend(objs);
        let _ = bthome::decode(&data, [0; 6], &mut Default::default());
    }

    #[test]
    fn short_ruuvi_frames_are_length_errors(len in 1usize..24) {
        let mut f = vec![5u8];
        f.resize(len, 0x11);
        let is_length_error = matches!(ruuvi::decode(&f), Err(DecodeError::Length { .. }));
        prop_assert!(is_length_error, "{} bytes", len);
    }

    #[test]
    fn odd_pvvx_lengths_are_length_errors(data in proptest::collection::vec(any::<u8>(), 0..40)) {
        let r = pvvx::decode(&data);
        if data.len() == 13 || data.len() == 15 {
            prop_assert!(r.is_ok());
        } else {
            let is_length_error = matches!(r, Err(DecodeError::Length { .. }));
            prop_assert!(is_length_error);
        }
    }

    #[test]
    fn encrypted_round_trip_and_tamper(objs in proptest::collection::vec(any::<u8>(), 1..20),
                                       key in any::<[u8; 16]>(), counter in 1u32..u32::MAX,
                                       flip in any::<usize>()) {
        let mac = [0xA4, 0xC1, 0x38, 1, 2, 3];
        let mut data = bthome::encrypt(&objs, mac, &key, counter);
        let mut ks = bthome::KeyState { key: Some(key), last_counter: None };
        prop_assert!(bthome::decode(&data, mac, &mut ks).is_ok());
        // Any flipped bit after the device byte fails authentication.
        let i = 1 + flip % (data.len() - 1);
        data[i] ^= 0x01;
        let mut ks = bthome::KeyState { key: Some(key), last_counter: None };
        prop_assert_eq!(bthome::decode(&data, mac, &mut ks), Err(DecodeError::WrongKey));
    }
}

#[test]
fn pvvx_and_atc1441_examples() {
    // pvvx custom: MAC a4:c1:38:11:22:33 reversed, 23.45 °C, 56.78 %, 2950 mV, 87 %, counter 9.
    let pvvx = [
        0x33, 0x22, 0x11, 0x38, 0xC1, 0xA4, 0x29, 0x09, 0x2E, 0x16, 0x86, 0x0B, 87, 9, 0x04,
    ];
    let d = pvvx::decode(&pvvx).unwrap();
    let vals: Vec<String> = d
        .measurements
        .iter()
        .map(|m| format!("{}={}", m.name, m.value))
        .collect();
    assert_eq!(
        vals,
        [
            "temperature=23.45",
            "humidity=56.78",
            "battery_voltage=2.95",
            "battery=87"
        ]
    );
    assert_eq!(d.dedupe, Some(9));
    assert_eq!(
        pvvx::mac_of(&pvvx),
        Some([0xA4, 0xC1, 0x38, 0x11, 0x22, 0x33])
    );
    // ATC1441: MAC as written, −5.2 °C, 61 %, 77 %, 2870 mV, counter 200.
    let atc = [
        0xA4, 0xC1, 0x38, 0x11, 0x22, 0x33, 0xFF, 0xCC, 61, 77, 0x0B, 0x36, 200,
    ];
    let d = pvvx::decode(&atc).unwrap();
    let vals: Vec<String> = d
        .measurements
        .iter()
        .map(|m| format!("{}={}", m.name, m.value))
        .collect();
    assert_eq!(
        vals,
        [
            "temperature=-5.2",
            "humidity=61",
            "battery=77",
            "battery_voltage=2.87"
        ]
    );
    assert_eq!(d.dedupe, Some(200));
}

#[test]
fn beacons_have_identities() {
    let mut ib = vec![0x02, 0x15];
    ib.extend((0u8..16).collect::<Vec<_>>());
    ib.extend([0x00, 0x01, 0x00, 0x02, 0xC5]);
    let d = decode::manufacturer_data(0x004C, &ib).unwrap().unwrap();
    assert_eq!(
        d.beacon.as_deref(),
        Some("ibeacon:00010203-0405-0607-0809-0a0b0c0d0e0f:1:2")
    );
    // Another Apple advert (not type 0x02) is no beacon and no error.
    assert!(decode::manufacturer_data(0x004C, &[0x10, 0x05, 1, 2]).is_none());
    let mut uid = vec![0x00, 0xEE];
    uid.extend([0xAB; 10]);
    uid.extend([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0, 0]);
    let d = decode::service_data(0xFEAA, &uid, [0; 6], &mut Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        d.beacon.as_deref(),
        Some("eddystone:abababababababababab:010203040506")
    );
    let url = [0x10, 0xEE, 0x03, b'w', b'e', b'i', b'r', 0x07];
    let d = decode::service_data(0xFEAA, &url, [0; 6], &mut Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(d.beacon.as_deref(), Some("eddystone-url:https://weir.com"));
    let tlm = [0x20, 0x00, 0x0B, 0xB8, 0x15, 0x80, 0, 0, 0, 1, 0, 0, 0, 2];
    let d = decode::service_data(0xFEAA, &tlm, [0; 6], &mut Default::default())
        .unwrap()
        .unwrap();
    let vals: Vec<String> = d
        .measurements
        .iter()
        .map(|m| format!("{}={}", m.name, m.value))
        .collect();
    assert_eq!(vals, ["battery_voltage=3", "temperature=21.5"]);
}
