//! The loader: walks the epochs' permutations, prepares samples on worker threads, skips
//! and counts bad ones, and emits batches that each carry the position after them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::data::collate::{Collator, Prepared};
use crate::data::rng::{epoch_order, fingerprint};
use crate::data::source::DatasetIndex;
use crate::data::{Batch, DataConfig, Skip, SkipStats};
use crate::text::tokenizer::FlamingoTokenizer;
use crate::{Error, Result};

/// Where a loader stands: the next sample is the `index`-th of epoch `epoch`'s order.
/// Saved with the training state; [`DataLoader::open`] continues exactly there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataPosition {
    pub epoch: u64,
    pub index: u64,
    /// Batches emitted so far, over all epochs.
    pub batches: u64,
    /// Samples emitted so far (skipped ones not included).
    pub samples: u64,
    pub skipped: SkipStats,
    /// Settings that decide the sample order (kind, seed, shuffle, batch size, the
    /// sources' names and count): a position only fits a loader with the same ones.
    pub fingerprint: String,
}

/// A deterministic stream of batches over a dataset.
pub struct DataLoader {
    collator: Arc<Collator>,
    position: DataPosition,
    /// The current epoch's order, and the epoch it belongs to.
    order: Option<(u64, Vec<u32>)>,
    /// Whether the current epoch was started at index 0 by this loader (an epoch that
    /// yields no batch at all is then an error instead of an endless loop).
    whole_epoch: bool,
    batches_this_epoch: u64,
}

impl DataLoader {
    /// Indexes the sources and positions the loader at `start` (a position a loader with the
    /// same settings emitted) or at the beginning.
    pub fn open(
        cfg: DataConfig,
        tokenizer: FlamingoTokenizer,
        start: Option<DataPosition>,
    ) -> Result<Self> {
        cfg.validate()?;
        let index = Arc::new(DatasetIndex::open(&cfg.manifests, &cfg.shards)?);
        if index.is_empty() {
            crate::invalid_input!(
                "data loader: the manifests and shards hold no samples ({})",
                index.source_names().join(", ")
            );
        }
        let fp = fingerprint(&format!(
            "{:?}|{}|{}|{}|{}|{}|{}",
            cfg.kind,
            cfg.seed,
            cfg.shuffle,
            cfg.batch_size,
            cfg.drop_last,
            index.len(),
            index.source_names().join("\u{1f}")
        ));
        let position = match start {
            None => DataPosition {
                epoch: 0,
                index: 0,
                batches: 0,
                samples: 0,
                skipped: SkipStats::default(),
                fingerprint: fp,
            },
            Some(p) => {
                if p.fingerprint != fp {
                    crate::invalid_input!(
                        "data loader: the saved data position belongs to other data or settings \
                         (the kind, seed, shuffle, batchSize, dropLast and the sources must be \
                         those of the run that saved it)"
                    );
                }
                if p.index > index.len() as u64 {
                    crate::invalid_input!(
                        "data loader: the saved position (sample {}) is past the end of the data ({} samples)",
                        p.index,
                        index.len()
                    );
                }
                p
            }
        };
        let whole_epoch = position.index == 0;
        Ok(Self {
            collator: Arc::new(Collator::new(cfg, index, tokenizer)),
            position,
            order: None,
            whole_epoch,
            batches_this_epoch: 0,
        })
    }

    pub fn config(&self) -> &DataConfig {
        &self.collator.cfg
    }

    /// Samples per epoch, before skipping.
    pub fn len(&self) -> usize {
        self.collator.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position after the last batch emitted.
    pub fn position(&self) -> &DataPosition {
        &self.position
    }

    pub fn skipped(&self) -> &SkipStats {
        &self.position.skipped
    }

    pub fn tokenizer(&self) -> &FlamingoTokenizer {
        &self.collator.tokenizer
    }

    fn start_epoch(&mut self) {
        self.position.epoch += 1;
        self.position.index = 0;
        self.whole_epoch = true;
        self.batches_this_epoch = 0;
    }

    /// The next batch, or `None` once the configured epochs are done.
    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let n = self.len() as u64;
        let batch_size = self.collator.cfg.batch_size;
        let mut got: Vec<(String, Prepared)> = Vec::with_capacity(batch_size);
        let mut first_position = None;
        loop {
            if self.position.index >= n {
                let usable = self.batches_this_epoch > 0 || !got.is_empty();
                if self.whole_epoch && !usable {
                    return Err(Error::InvalidInput(format!(
                        "data loader: epoch {} yielded no batch: {} of {n} samples were skipped {}, \
                         and batchSize is {batch_size}{}",
                        self.position.epoch,
                        self.position.skipped.total(),
                        serde_json::to_string(&self.position.skipped.counts).unwrap_or_default(),
                        match self.position.skipped.examples.first() {
                            Some(e) => format!(" (first: {e})"),
                            None => String::new(),
                        }
                    )));
                }
                if !got.is_empty() && !self.collator.cfg.drop_last {
                    return self.emit(got, first_position.unwrap_or(0)).map(Some);
                }
                got.clear();
                first_position = None;
                self.start_epoch();
            }
            if self
                .collator
                .cfg
                .epochs
                .is_some_and(|e| self.position.epoch >= e)
            {
                return Ok(None);
            }
            let epoch = self.position.epoch;
            if self.order.as_ref().map(|(e, _)| *e) != Some(epoch) {
                let cfg = &self.collator.cfg;
                self.order = Some((epoch, epoch_order(n as usize, cfg.seed, epoch, cfg.shuffle)));
            }
            let start = self.position.index;
            let window = ((batch_size - got.len()) as u64).min(n - start) as usize;
            let results = self.prepare_window(epoch, start, window);
            for (offset, (location, result)) in results.into_iter().enumerate() {
                match result {
                    Ok(prepared) => {
                        first_position.get_or_insert(start + offset as u64);
                        got.push((location, prepared));
                    }
                    Err(skip) => self.position.skipped.record(&location, &skip),
                }
            }
            self.position.index = start + window as u64;
            if got.len() == batch_size {
                return self.emit(got, first_position.unwrap_or(0)).map(Some);
            }
        }
    }

    fn emit(&mut self, got: Vec<(String, Prepared)>, first_position: u64) -> Result<Batch> {
        let epoch = self.position.epoch;
        self.position.batches += 1;
        self.position.samples += got.len() as u64;
        self.batches_this_epoch += 1;
        if self.position.index >= self.len() as u64 {
            // "End of epoch e" is saved as "start of epoch e + 1".
            self.start_epoch();
        }
        let after = self.position.clone();
        self.collator.assemble(got, epoch, first_position, after)
    }

    /// Prepares samples `start .. start + window` of the epoch's order on up to `workers`
    /// threads; results come back in order, so the outcome never depends on the threads.
    fn prepare_window(
        &self,
        epoch: u64,
        start: u64,
        window: usize,
    ) -> Vec<(String, std::result::Result<Prepared, Skip>)> {
        let order = &self.order.as_ref().expect("order set before preparing").1;
        let collator = &self.collator;
        let job = |i: usize| {
            let position = start + i as u64;
            let sample = order[position as usize] as usize;
            (
                collator.index.describe(sample),
                collator.prepare(sample, epoch, position),
            )
        };
        let workers = collator.cfg.workers.clamp(1, window.max(1));
        if workers == 1 {
            return (0..window).map(job).collect();
        }
        let slots: Vec<Mutex<Option<_>>> = (0..window).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= window {
                        break;
                    }
                    let result = job(i);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(result);
                    }
                });
            }
        });
        slots
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .ok()
                    .flatten()
                    .expect("every slot is filled by a worker")
            })
            .collect()
    }
}
