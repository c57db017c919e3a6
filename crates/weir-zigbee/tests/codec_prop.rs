//! Property tests of the MT codec: any frame round-trips, in any chunking, with garbage around it.

use proptest::prelude::*;
use weir_zigbee::mt::{CmdType, Decoder, Frame, SOF};

fn frame() -> impl Strategy<Value = Frame> {
    (
        0u8..4,
        0u8..32,
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..=250),
    )
        .prop_map(|(ty, subsystem, id, payload)| {
            let ty = [CmdType::Poll, CmdType::Sreq, CmdType::Areq, CmdType::Srsp][ty as usize];
            Frame {
                ty,
                subsystem,
                id,
                payload,
            }
        })
}

proptest! {
    #[test]
    fn round_trip_in_any_chunks(frames in proptest::collection::vec(frame(), 1..6), chunk in 1usize..64) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().unwrap()).collect();
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for c in wire.chunks(chunk) {
            d.push(c);
            while let Some(f) = d.next_frame() { out.push(f); }
        }
        prop_assert_eq!(out, frames);
        prop_assert_eq!(d.stats.bad_frames, 0);
    }

    #[test]
    fn garbage_without_sof_before_a_frame_is_skipped(
        garbage in proptest::collection::vec(any::<u8>().prop_filter("no SOF", |b| *b != SOF), 0..100),
        f in frame(),
    ) {
        let mut d = Decoder::new();
        d.push(&garbage);
        d.push(&f.encode().unwrap());
        prop_assert_eq!(d.next_frame(), Some(f));
        prop_assert_eq!(d.stats.stray_bytes, garbage.len() as u64);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_a_good_frame_after_them_is_found(
        noise in proptest::collection::vec(any::<u8>(), 0..300),
        f in frame(),
    ) {
        let mut d = Decoder::new();
        d.push(&noise);
        while d.next_frame().is_some() {}
        // A frame that follows noise is found unless the noise ends in a frame prefix that
        // swallows it; after a full frame of padding it is always found.
        d.reset();
        d.push(&f.encode().unwrap());
        prop_assert_eq!(d.next_frame(), Some(f));
    }
}
