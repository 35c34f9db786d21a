//! How far one image pull has come: the engine reports each layer's progress as it reads
//! its daemon's pull stream, the executor reads the sum (log lines, `/metrics`, the stall
//! check).
//!
//! Owns the aggregation of a pull's layers (how many, how many done, bytes downloaded of
//! bytes known) and when it last moved. It must not know Docker's wire format (the engine
//! translates it) nor decide anything about a pull (that is `executor::pulls`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What the engine says about one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerEvent {
    /// The layer is part of the image (waiting, or about to download).
    Known,
    /// Downloading: `current` of `total` bytes (`total` 0 when unknown).
    Downloading { current: u64, total: u64 },
    /// Downloaded (extracting, or verified).
    Downloaded,
    /// In place: pulled and extracted, or already on the host.
    Done,
}

#[derive(Debug, Default, Clone, Copy)]
struct Layer {
    current: u64,
    total: u64,
    downloaded: bool,
    done: bool,
}

#[derive(Debug)]
struct State {
    layers: BTreeMap<String, Layer>,
    moved: Instant,
}

/// The progress of one pull, shared between the engine that pulls and the executor.
#[derive(Debug)]
pub struct PullProgress {
    started: Instant,
    state: Mutex<State>,
    /// Told when the pull's known size grows (a layer's size became known).
    grew: tokio::sync::Notify,
}

/// A pull's progress at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullSummary {
    pub layers: usize,
    pub layers_done: usize,
    /// Bytes downloaded, of the layers whose size is known.
    pub bytes_done: u64,
    /// The size of the layers known so far (grows as the engine learns them).
    pub bytes_total: u64,
}

impl Default for PullProgress {
    fn default() -> Self {
        PullProgress::new()
    }
}

impl PullProgress {
    pub fn new() -> PullProgress {
        let now = Instant::now();
        PullProgress {
            started: now,
            state: Mutex::new(State {
                layers: BTreeMap::new(),
                moved: now,
            }),
            grew: tokio::sync::Notify::new(),
        }
    }

    /// Completes when the pull's known size next grows. Create it before reading the
    /// summary, so no growth between the two is missed.
    pub fn size_grew(&self) -> tokio::sync::futures::Notified<'_> {
        self.grew.notified()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records what the engine said about layer `id`; any change counts as movement.
    pub fn layer(&self, id: &str, event: LayerEvent) {
        let mut state = self.lock();
        let new = !state.layers.contains_key(id);
        let layer = state.layers.entry(id.to_string()).or_default();
        let before = *layer;
        match event {
            LayerEvent::Known => {}
            LayerEvent::Downloading { current, total } => {
                layer.current = current;
                if total > 0 {
                    layer.total = total;
                }
            }
            LayerEvent::Downloaded => {
                layer.downloaded = true;
                layer.current = layer.total.max(layer.current);
            }
            LayerEvent::Done => {
                layer.downloaded = true;
                layer.done = true;
                layer.current = layer.total.max(layer.current);
            }
        }
        let grew = layer.total != before.total;
        let moved = new
            || layer.current != before.current
            || grew
            || layer.downloaded != before.downloaded
            || layer.done != before.done;
        if moved {
            state.moved = Instant::now();
        }
        drop(state);
        if grew {
            self.grew.notify_waiters();
        }
    }

    /// The sum over the layers now.
    pub fn summary(&self) -> PullSummary {
        let state = self.lock();
        let mut summary = PullSummary {
            layers: state.layers.len(),
            ..PullSummary::default()
        };
        for layer in state.layers.values() {
            summary.layers_done += usize::from(layer.done);
            summary.bytes_done += layer.current;
            summary.bytes_total += layer.total;
        }
        summary
    }

    /// How long ago the pull last moved (or began).
    pub fn still_for(&self) -> Duration {
        self.lock().moved.elapsed()
    }

    /// How long the pull has lasted.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// One line for a log: `3/7 layers, 412 MB/1.9 GB, about 40 s left`.
    pub fn describe(&self) -> String {
        let s = self.summary();
        let mut line = format!(
            "{}/{} layers, {}/{}",
            s.layers_done,
            s.layers,
            bytes(s.bytes_done),
            bytes(s.bytes_total)
        );
        let elapsed = self.elapsed().as_secs_f64();
        if s.bytes_done > 0 && s.bytes_total > s.bytes_done && elapsed > 0.0 {
            let rate = s.bytes_done as f64 / elapsed;
            let left = (s.bytes_total - s.bytes_done) as f64 / rate;
            line.push_str(&format!(", about {} s left", left.ceil() as u64));
        }
        line
    }
}

/// Bytes for people: `412 MB`, `1.9 GB` (also image_gc's log lines and errors).
pub fn bytes(n: u64) -> String {
    const MB: f64 = 1_000_000.0;
    let n = n as f64;
    if n >= 1000.0 * MB {
        format!("{:.1} GB", n / (1000.0 * MB))
    } else {
        format!("{:.0} MB", n / MB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn layers_and_bytes_add_up_and_movement_is_seen() {
        let p = PullProgress::new();
        p.layer("a", LayerEvent::Known);
        p.layer("b", LayerEvent::Known);
        p.layer("c", LayerEvent::Done); // already on the host
        p.layer(
            "a",
            LayerEvent::Downloading {
                current: 100_000_000,
                total: 400_000_000,
            },
        );
        p.layer(
            "b",
            LayerEvent::Downloading {
                current: 0,
                total: 1_500_000_000,
            },
        );
        assert_eq!(
            p.summary(),
            PullSummary {
                layers: 3,
                layers_done: 1,
                bytes_done: 100_000_000,
                bytes_total: 1_900_000_000,
            }
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(p.still_for(), Duration::from_secs(10));
        assert_eq!(p.describe(), "1/3 layers, 100 MB/1.9 GB, about 180 s left");
        // The same figures again are no movement; more bytes are.
        p.layer(
            "a",
            LayerEvent::Downloading {
                current: 100_000_000,
                total: 400_000_000,
            },
        );
        assert_eq!(p.still_for(), Duration::from_secs(10));
        p.layer("a", LayerEvent::Downloaded);
        assert_eq!(p.still_for(), Duration::ZERO);
        p.layer("a", LayerEvent::Done);
        p.layer("b", LayerEvent::Done);
        let s = p.summary();
        assert_eq!(
            (s.layers_done, s.bytes_done, s.bytes_total),
            (3, 1_900_000_000, 1_900_000_000)
        );
        assert_eq!(p.describe(), "3/3 layers, 1.9 GB/1.9 GB");
    }
}
