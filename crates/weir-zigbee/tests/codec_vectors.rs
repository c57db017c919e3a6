//! Frames encoded by zigpy-znp (tests/vectors/zigpy_znp.txt, written by tests/peer/gen_vectors.py)
//! decode in our codec to the same command bytes and payload, and our encoder writes the same bytes.

use weir_zigbee::mt::{Decoder, Frame};

fn hex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn zigpy_znp_vectors_decode_and_reencode() {
    let table = include_str!("vectors/zigpy_znp.txt");
    let mut n = 0;
    let mut all = Vec::new();
    for line in table.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [name, cmd0, cmd1, payload, wire] = cols[..] else {
            panic!("bad line {line}")
        };
        let (cmd0, cmd1) = (hex(cmd0)[0], hex(cmd1)[0]);
        let wire = hex(wire);
        let mut d = Decoder::new();
        d.push(&wire);
        let f = d.next_frame().unwrap_or_else(|| panic!("{name}: no frame"));
        assert_eq!((f.cmd0(), f.id), (cmd0, cmd1), "{name}");
        assert_eq!(f.payload, hex(payload), "{name}");
        assert_eq!(d.stats.bad_frames + d.stats.stray_bytes, 0, "{name}");
        let again = Frame::from_cmd_bytes(cmd0, cmd1, hex(payload)).unwrap();
        assert_eq!(
            again.encode().unwrap(),
            wire,
            "{name}: our encoding differs"
        );
        all.extend_from_slice(&wire);
        n += 1;
    }
    assert!(n >= 30, "only {n} vectors");
    // The whole table as one stream, split at every byte boundary, gives every frame.
    let mut d = Decoder::new();
    let mut got = 0;
    for b in &all {
        d.push(std::slice::from_ref(b));
        while d.next_frame().is_some() {
            got += 1;
        }
    }
    assert_eq!(got, n);
}
