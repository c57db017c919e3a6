//! The forwarder's packet-id ↔ outbox-row matching, free of I/O (rumqtt's `MqttState` is the
//! model: a pure state machine fed with the client's events).
//!
//! rumqttc does not return a packet id from `publish`: it reports `Outgoing::Publish(pkid)` for
//! each request, in the order the requests were handed to it, and `PubAck(pkid)` later, in any
//! order. So:
//!
//! 1. [`Inflight::request`] records, in request order, what each publish carries: an outbox row
//!    id, or `None` for a message that is not a row (status, command results);
//! 2. [`Inflight::sent`] pairs the next `Outgoing::Publish(pkid)` with the oldest request; a QoS 0
//!    publish (pkid 0) is done once written, a QoS 1 one now awaits its PUBACK under `pkid`;
//! 3. [`Inflight::acked`] resolves a PUBACK to its row: delivered (delete it) or refused with the
//!    broker's reason (an MQTT 5 reason code ≥ 0x80).
//!
//! Invariants: a row is reported done (delivered or refused) at most once per session, and only
//! after the broker acknowledged *that* row's packet id; a PUBACK for an unknown packet id, or for a
//! message that is not a row, never resolves a row. [`Inflight::clear`] (the connection dropped)
//! returns every row requested and not yet resolved: those stay in the outbox and are sent again
//! by the next session (at-least-once: they are the only possible duplicates).

use std::collections::{HashMap, VecDeque};

/// What an `Outgoing::Publish(pkid)` was paired with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A QoS 0 row was written: nothing more will come for it, it is delivered.
    Delivered(i64),
    /// A QoS 1 row now awaits its PUBACK.
    Awaiting(i64),
    /// A message that is not a row.
    NotARow,
    /// A publish event with no request left to pair it with (a bug or a foreign publish).
    Unmatched,
    /// The packet id was already awaiting an ack for `previous` (a broken client): `previous`
    /// is forgotten (it stays in the outbox and is sent again next session) and the new row
    /// awaits under the id.
    Reused { previous: i64, row: i64 },
}

/// What a PUBACK resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// The broker took the row: delete it.
    Delivered(i64),
    /// The broker refused the row (MQTT 5 reason code), with its reason.
    Refused(i64, String),
    /// The ack was for a message that is not a row.
    NotARow,
    /// No publish awaits an ack under this packet id.
    Unknown,
}

/// Publishes requested but not yet resolved, for one session.
#[derive(Debug, Default, Clone)]
pub struct Inflight {
    /// Requested, not yet written, in request order.
    requested: VecDeque<Option<i64>>,
    /// Written with QoS 1, awaiting the PUBACK, by packet id.
    awaiting: HashMap<u16, Option<i64>>,
}

impl Inflight {
    pub fn new() -> Self {
        Self::default()
    }

    /// A publish was handed to the client; `row` is its outbox id, `None` for other messages.
    pub fn request(&mut self, row: Option<i64>) {
        self.requested.push_back(row);
    }

    /// The client wrote the next requested publish under `pkid` (0 for QoS 0).
    pub fn sent(&mut self, pkid: u16) -> Sent {
        let Some(row) = self.requested.pop_front() else {
            return Sent::Unmatched;
        };
        if pkid == 0 {
            return match row {
                Some(id) => Sent::Delivered(id),
                None => Sent::NotARow,
            };
        }
        match (self.awaiting.insert(pkid, row), row) {
            (Some(Some(previous)), Some(id)) => Sent::Reused { previous, row: id },
            (_, Some(id)) => Sent::Awaiting(id),
            (_, None) => Sent::NotARow,
        }
    }

    /// The broker acknowledged `pkid`: `Err(reason)` when it refused the message.
    pub fn acked(&mut self, pkid: u16, result: Result<(), String>) -> Ack {
        match (self.awaiting.remove(&pkid), result) {
            (None, _) => Ack::Unknown,
            (Some(None), _) => Ack::NotARow,
            (Some(Some(id)), Ok(())) => Ack::Delivered(id),
            (Some(Some(id)), Err(reason)) => Ack::Refused(id, reason),
        }
    }

    /// Messages requested and not yet resolved (rows and others): what counts against the
    /// in-flight window.
    pub fn len(&self) -> usize {
        self.requested.len() + self.awaiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest row id requested and not resolved: the first row a broker that handles
    /// packets in order has not acknowledged yet.
    pub fn oldest_row(&self) -> Option<i64> {
        self.requested
            .iter()
            .chain(self.awaiting.values())
            .flatten()
            .copied()
            .min()
    }

    /// The connection dropped: forget everything and return the unresolved rows, ascending.
    pub fn clear(&mut self) -> Vec<i64> {
        let mut rows: Vec<i64> = self
            .requested
            .drain(..)
            .chain(self.awaiting.drain().map(|(_, r)| r))
            .flatten()
            .collect();
        rows.sort_unstable();
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn rows_resolve_through_their_own_packet_ids() {
        let mut f = Inflight::new();
        f.request(None); // `online`
        f.request(Some(10));
        f.request(Some(11));
        f.request(Some(12));
        assert_eq!(f.len(), 4);
        assert_eq!(f.sent(1), Sent::NotARow);
        assert_eq!(f.sent(2), Sent::Awaiting(10));
        assert_eq!(f.sent(3), Sent::Awaiting(11));
        // Acks out of order.
        assert_eq!(f.acked(3, Ok(())), Ack::Delivered(11));
        assert_eq!(f.oldest_row(), Some(10));
        assert_eq!(f.acked(1, Ok(())), Ack::NotARow);
        assert_eq!(
            f.acked(2, Err("NotAuthorized".into())),
            Ack::Refused(10, "NotAuthorized".into())
        );
        // A duplicate ack resolves nothing.
        assert_eq!(f.acked(2, Ok(())), Ack::Unknown);
        assert_eq!(f.oldest_row(), Some(12));
        assert_eq!(f.len(), 1);
        // Packet id 2 is free again and is reused for row 12.
        assert_eq!(f.sent(2), Sent::Awaiting(12));
        assert_eq!(f.acked(2, Ok(())), Ack::Delivered(12));
        assert!(f.is_empty());
        assert_eq!(f.sent(4), Sent::Unmatched);
    }

    #[test]
    fn qos0_rows_are_done_when_written() {
        let mut f = Inflight::new();
        f.request(Some(1));
        f.request(None);
        assert_eq!(f.sent(0), Sent::Delivered(1));
        assert_eq!(f.sent(0), Sent::NotARow);
        assert!(f.is_empty());
        assert_eq!(f.acked(0, Ok(())), Ack::Unknown);
    }

    #[test]
    fn a_drop_returns_every_unresolved_row() {
        let mut f = Inflight::new();
        for id in [5, 6, 7, 8] {
            f.request(Some(id));
        }
        f.request(None);
        assert_eq!(f.sent(9), Sent::Awaiting(5));
        assert_eq!(f.sent(10), Sent::Awaiting(6));
        assert_eq!(f.acked(9, Ok(())), Ack::Delivered(5));
        assert_eq!(f.oldest_row(), Some(6));
        assert_eq!(f.clear(), vec![6, 7, 8]);
        assert!(f.is_empty());
        assert_eq!(f.oldest_row(), None);
        // Acks of the old connection resolve nothing in the new one.
        assert_eq!(f.acked(10, Ok(())), Ack::Unknown);
    }

    #[test]
    fn a_reused_packet_id_forgets_the_older_row_without_resolving_it() {
        let mut f = Inflight::new();
        f.request(Some(1));
        f.request(Some(2));
        assert_eq!(f.sent(7), Sent::Awaiting(1));
        assert_eq!(
            f.sent(7),
            Sent::Reused {
                previous: 1,
                row: 2
            }
        );
        assert_eq!(f.acked(7, Ok(())), Ack::Delivered(2));
        assert!(f.is_empty());
    }

    /// One step of a session as the client and broker could produce it.
    #[derive(Debug, Clone)]
    enum Step {
        /// Request a row (true) or another message (false), QoS 1 (or 0 when `qos0`).
        Request { row: bool, qos0: bool },
        /// The client writes the oldest unwritten request.
        Write,
        /// The broker acks the i-th (mod len) awaiting packet, refusing it when `refuse`.
        Ack { pick: usize, refuse: bool },
        /// An ack for a packet id nothing awaits.
        Stray(u16),
        /// The connection drops.
        Drop,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (any::<bool>(), proptest::bool::weighted(0.1))
                .prop_map(|(row, qos0)| Step::Request { row, qos0 }),
            3 => Just(Step::Write),
            3 => (any::<usize>(), proptest::bool::weighted(0.2))
                .prop_map(|(pick, refuse)| Step::Ack { pick, refuse }),
            1 => any::<u16>().prop_map(Step::Stray),
            1 => Just(Step::Drop),
        ]
    }

    proptest! {
        /// Against a model of the client (request order, unique packet ids among those awaiting,
        /// rumqttc-style) and a broker acking in any order: every row resolves exactly once, with
        /// the outcome of its own ack, and a drop returns exactly the unresolved rows.
        #[test]
        fn matches_a_model_client_and_broker(steps in proptest::collection::vec(step(), 0..300)) {
            let mut f = Inflight::new();
            let mut next_row = 1i64;
            // Model: unwritten requests (row, qos0), awaiting acks (pkid -> row).
            let mut unwritten: VecDeque<(Option<i64>, bool)> = VecDeque::new();
            let mut awaiting: Vec<(u16, Option<i64>)> = Vec::new();
            let mut next_pkid: u16 = 1;
            let mut resolved: BTreeSet<i64> = BTreeSet::new();
            for s in steps {
                match s {
                    Step::Request { row, qos0 } => {
                        let r = row.then(|| { next_row += 1; next_row });
                        f.request(r);
                        unwritten.push_back((r, qos0));
                    }
                    Step::Write => {
                        let Some((r, qos0)) = unwritten.pop_front() else {
                            prop_assert_eq!(f.sent(1), Sent::Unmatched);
                            continue;
                        };
                        if qos0 {
                            let got = f.sent(0);
                            match r {
                                Some(id) => {
                                    prop_assert_eq!(got, Sent::Delivered(id));
                                    prop_assert!(resolved.insert(id));
                                }
                                None => prop_assert_eq!(got, Sent::NotARow),
                            }
                            continue;
                        }
                        // rumqttc: the next packet id not awaiting an ack, 1..=u16::MAX.
                        while next_pkid == 0 || awaiting.iter().any(|(p, _)| *p == next_pkid) {
                            next_pkid = next_pkid.wrapping_add(1);
                        }
                        let pkid = next_pkid;
                        next_pkid = next_pkid.wrapping_add(1);
                        let got = f.sent(pkid);
                        match r {
                            Some(id) => prop_assert_eq!(got, Sent::Awaiting(id)),
                            None => prop_assert_eq!(got, Sent::NotARow),
                        }
                        awaiting.push((pkid, r));
                    }
                    Step::Ack { pick, refuse } => {
                        if awaiting.is_empty() {
                            continue;
                        }
                        let (pkid, r) = awaiting.remove(pick % awaiting.len());
                        let result = if refuse { Err("NotAuthorized".to_string()) } else { Ok(()) };
                        let got = f.acked(pkid, result);
                        match (r, refuse) {
                            (None, _) => prop_assert_eq!(got, Ack::NotARow),
                            (Some(id), false) => {
                                prop_assert_eq!(got, Ack::Delivered(id));
                                prop_assert!(resolved.insert(id));
                            }
                            (Some(id), true) => {
                                prop_assert_eq!(got, Ack::Refused(id, "NotAuthorized".into()));
                                prop_assert!(resolved.insert(id));
                            }
                        }
                    }
                    Step::Stray(pkid) => {
                        if pkid == 0 || awaiting.iter().any(|(p, _)| *p == pkid) {
                            continue;
                        }
                        prop_assert_eq!(f.acked(pkid, Ok(())), Ack::Unknown);
                    }
                    Step::Drop => {
                        let mut want: Vec<i64> = unwritten
                            .drain(..)
                            .map(|(r, _)| r)
                            .chain(awaiting.drain(..).map(|(_, r)| r))
                            .flatten()
                            .collect();
                        want.sort_unstable();
                        prop_assert_eq!(f.clear(), want);
                        next_pkid = 1;
                    }
                }
                prop_assert_eq!(f.len(), unwritten.len() + awaiting.len());
                let oldest = unwritten.iter().map(|(r, _)| *r)
                    .chain(awaiting.iter().map(|(_, r)| *r))
                    .flatten()
                    .min();
                prop_assert_eq!(f.oldest_row(), oldest);
            }
        }
    }
}
