//! Request planning: the fewest read requests that cover a device's points.
//!
//! Points of one table polled at the same interval are sorted by address and merged greedily:
//! a request grows to take the next point while the whole span stays within the per-request limit
//! (125 registers, Modbus Application Protocol V1.1b3 §6.3/§6.4; 2000 bits, §6.1/§6.2; or the
//! configured `max_registers`) and the hole before the point is at most `max_gap` items, which are
//! read and discarded. Starting each request at the first point not yet covered and growing it as
//! far as allowed gives the fewest requests for that order (an exchange argument: no plan can end
//! its k-th request further right).
//!
//! Invariants: every point lies wholly inside exactly one block of its (table, interval) group; no
//! block exceeds its limit; no block contains a hole longer than `max_gap`.

use std::time::Duration;

use crate::pdu::Table;

/// What the planner needs to know about a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub point: usize,
    pub table: Table,
    pub address: u16,
    /// Registers (or bits) the point occupies, at least 1.
    pub count: u16,
    pub interval: Duration,
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub interval: Duration,
    /// (point index, offset of its first item within the block)
    pub points: Vec<(usize, u16)>,
}

impl Block {
    fn end(&self) -> u32 {
        self.address as u32 + self.count as u32
    }
}

/// Plan the read requests for `spans`. `max_registers` caps register reads (≤ 125); bit reads are
/// capped at 2000. The result is ordered by (table, interval, address).
pub fn plan(spans: &[Span], max_registers: u16, max_gap: u16) -> Vec<Block> {
    let mut sorted: Vec<&Span> = spans.iter().collect();
    sorted.sort_by_key(|s| (s.table, s.interval, s.address, s.count));
    let mut out: Vec<Block> = Vec::new();
    for s in sorted {
        let limit = if s.table.is_bits() {
            s.table.max_read() as u32
        } else {
            max_registers.min(s.table.max_read()) as u32
        };
        let s_end = s.address as u32 + s.count as u32;
        if let Some(b) = out.last_mut() {
            if b.table == s.table
                && b.interval == s.interval
                && s.address as u32 <= b.end() + max_gap as u32
                && s_end.max(b.end()) - b.address as u32 <= limit
            {
                b.count = (s_end.max(b.end()) - b.address as u32) as u16;
                b.points.push((s.point, s.address - b.address));
                continue;
            }
        }
        out.push(Block {
            table: s.table,
            address: s.address,
            count: s.count,
            interval: s.interval,
            points: vec![(s.point, 0)],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(point: usize, address: u16, count: u16) -> Span {
        Span {
            point,
            table: Table::Holding,
            address,
            count,
            interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn merges_adjacent_and_small_gaps_splits_large_ones() {
        let b = plan(
            &[span(0, 0, 2), span(1, 2, 2), span(2, 10, 1), span(3, 40, 4)],
            125,
            6,
        );
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].address, b[0].count), (0, 11));
        assert_eq!(b[0].points, vec![(0, 0), (1, 2), (2, 10)]);
        assert_eq!((b[1].address, b[1].count), (40, 4));
    }

    #[test]
    fn respects_the_125_register_limit() {
        let spans: Vec<Span> = (0..100).map(|i| span(i, i as u16 * 2, 2)).collect();
        let b = plan(&spans, 125, 0);
        assert_eq!(b.len(), 2, "200 registers need two requests");
        assert!(b.iter().all(|b| b.count <= 125));
        assert_eq!(b[0].count, 124);
    }

    #[test]
    fn separates_tables_and_intervals() {
        let mut a = span(0, 0, 1);
        a.table = Table::Input;
        let mut c = span(2, 2, 1);
        c.interval = Duration::from_secs(5);
        let b = plan(&[a, span(1, 1, 1), c], 125, 10);
        assert_eq!(b.len(), 3);
    }

    proptest! {
        #[test]
        fn every_point_is_covered_once_within_limits(
            pts in prop::collection::vec((0u16..600, 1u16..5, 0u8..2), 1..60),
            max in 10u16..=125, gap in 0u16..20,
        ) {
            let spans: Vec<Span> = pts.iter().enumerate().map(|(i, (a, c, t))| Span {
                point: i,
                table: if *t == 0 { Table::Holding } else { Table::Coil },
                address: *a,
                count: *c,
                interval: Duration::from_secs(1),
            }).collect();
            let blocks = plan(&spans, max, gap);
            let mut seen = vec![0; spans.len()];
            for b in &blocks {
                let limit = if b.table.is_bits() { 2000 } else { max };
                prop_assert!(b.count <= limit);
                for (p, off) in &b.points {
                    seen[*p] += 1;
                    let s = &spans[*p];
                    prop_assert_eq!(s.table, b.table);
                    prop_assert_eq!(b.address + off, s.address);
                    prop_assert!(s.address as u32 + s.count as u32 <= b.address as u32 + b.count as u32);
                }
            }
            prop_assert!(seen.iter().all(|n| *n == 1));
        }
    }
}
