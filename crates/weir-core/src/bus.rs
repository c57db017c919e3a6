//! The bus: a bounded channel of [`Batch`]es from every source to the pipeline.
//!
//! Capacity is counted in batches. When the bus is full:
//! * [`BusSender::send`] waits — polling sources (Modbus, CoAP client, the simulator) slow down;
//! * [`BusSender::try_send`] drops the newest batch and counts every reading in it against the
//!   sending source (`weir_bus_dropped_total{source=…}`) — push sources (BLE adverts, Zigbee
//!   reports, CoAP posts) cannot slow their devices down.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::{Counter, Metrics};
use crate::reading::Batch;

/// The pipeline has stopped: the batch could not be delivered.
#[derive(Debug, thiserror::Error)]
#[error("the bus is closed (the gateway is shutting down)")]
pub struct SendError;

/// Create a bus holding at most `capacity` batches.
pub fn bus(capacity: usize, metrics: &Metrics) -> (BusSender, BusReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let depth = metrics.gauge("weir_bus_depth_batches", &[]);
    (
        BusSender {
            tx,
            source: Arc::from(""),
            readings_in: metrics.counter("weir_readings_in_total", &[("source", "")]),
            dropped: metrics.counter("weir_bus_dropped_total", &[("source", "")]),
            metrics: metrics.clone(),
            depth: depth.clone(),
        },
        BusReceiver { rx, depth },
    )
}

/// The sending half; clone one per source with [`BusSender::for_source`].
#[derive(Clone, Debug)]
pub struct BusSender {
    tx: mpsc::Sender<Batch>,
    source: Arc<str>,
    readings_in: Counter,
    dropped: Counter,
    metrics: Metrics,
    depth: crate::metrics::Gauge,
}

impl BusSender {
    /// A sender whose counters are labelled with `source`.
    pub fn for_source(&self, source: &str) -> BusSender {
        BusSender {
            tx: self.tx.clone(),
            source: Arc::from(source),
            readings_in: self
                .metrics
                .counter("weir_readings_in_total", &[("source", source)]),
            dropped: self
                .metrics
                .counter("weir_bus_dropped_total", &[("source", source)]),
            metrics: self.metrics.clone(),
            depth: self.depth.clone(),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Send, waiting while the bus is full (back-pressure for polling sources).
    pub async fn send(&self, batch: Batch) -> Result<(), SendError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        self.tx.send(batch).await.map_err(|_| SendError)?;
        self.readings_in.add(n);
        self.depth.set(self.depth_now());
        Ok(())
    }

    /// Send without waiting; when the bus is full the batch is dropped and counted.
    /// Returns `Ok(false)` when it was dropped.
    pub fn try_send(&self, batch: Batch) -> Result<bool, SendError> {
        if batch.is_empty() {
            return Ok(true);
        }
        let n = batch.len() as u64;
        match self.tx.try_send(batch) {
            Ok(()) => {
                self.readings_in.add(n);
                self.depth.set(self.depth_now());
                Ok(true)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.add(n);
                Ok(false)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError),
        }
    }

    fn depth_now(&self) -> i64 {
        (self.tx.max_capacity() - self.tx.capacity()) as i64
    }
}

/// The receiving half, owned by the pipeline.
#[derive(Debug)]
pub struct BusReceiver {
    rx: mpsc::Receiver<Batch>,
    depth: crate::metrics::Gauge,
}

impl BusReceiver {
    /// The next batch; `None` once every sender is gone and the bus is drained.
    pub async fn recv(&mut self) -> Option<Batch> {
        let b = self.rx.recv().await;
        self.depth.set(self.rx.len() as i64);
        b
    }

    /// A batch if one is waiting.
    pub fn try_recv(&mut self) -> Option<Batch> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::*;

    fn batch(n: usize) -> Batch {
        (0..n)
            .map(|i| Reading {
                device: "d".into(),
                point: "p".into(),
                value: Value::I64(i as i64),
                unit: None,
                ts: Timestamp(0),
                quality: Quality::Good,
                source: Arc::from("t"),
            })
            .collect()
    }

    #[tokio::test]
    async fn full_bus_drops_newest_for_push_sources_and_counts() {
        let m = Metrics::new();
        let (tx, mut rx) = bus(1, &m);
        let tx = tx.for_source("ble0");
        assert!(tx.try_send(batch(3)).unwrap());
        assert!(!tx.try_send(batch(5)).unwrap());
        assert_eq!(
            m.counter("weir_bus_dropped_total", &[("source", "ble0")])
                .get(),
            5
        );
        assert_eq!(rx.recv().await.unwrap().len(), 3);
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn full_bus_makes_polling_sources_wait() {
        let m = Metrics::new();
        let (tx, mut rx) = bus(1, &m);
        tx.send(batch(1)).await.unwrap();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move { tx2.send(batch(2)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "send must wait while the bus is full"
        );
        assert_eq!(rx.recv().await.unwrap().len(), 1);
        waiter.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap().len(), 2);
    }
}
