//! Batches prepared ahead in background threads (HF's dataloader_num_workers and
//! dataloader_prefetch_factor): worker k makes batches k, k + N, k + 2N, ... of the epoch,
//! as PyTorch's DataLoader deals them out, each up to `prefetch` ahead, and the training
//! thread takes them in order. Making a batch gathers its rows (from memory-mapped files
//! for data too big for the device) and copies them to the device; the workers overlap
//! that with the training step.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use tch::Tensor;

use super::{Batch, Dataset};

/// The batches of one epoch (from a given one on), in order.
pub struct BatchLoader {
    workers: Vec<(Receiver<Batch>, JoinHandle<()>)>,
    /// The index of the next batch to hand out.
    next: usize,
    first: usize,
}

impl BatchLoader {
    /// Workers for the batches `indices[first..]`: `workers` threads, each keeping up to
    /// `prefetch` batches ready.
    pub fn start(data: &Dataset, indices: &[Tensor], first: usize, workers: usize, prefetch: usize) -> Self {
        let workers = (0..workers)
            .map(|k| {
                let (sender, receiver) = sync_channel(prefetch.max(1));
                let data = data.shallow_copy();
                let mine: Vec<Tensor> =
                    indices.iter().skip(first + k).step_by(workers).map(Tensor::shallow_clone).collect();
                let handle = std::thread::Builder::new()
                    .name(format!("batches-{k}"))
                    .spawn(move || {
                        let _no_grad = tch::no_grad_guard();
                        for index in &mine {
                            // The receiver is gone when the epoch ended early: stop.
                            if sender.send(data.batch(index)).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("start a data-loading thread");
                (receiver, handle)
            })
            .collect();
        Self { workers, next: first, first }
    }

    /// Batch `index` of the epoch; batches are taken in order.
    pub fn take(&mut self, index: usize) -> Option<Batch> {
        assert_eq!(index, self.next, "batches are taken in order");
        let worker = (index - self.first) % self.workers.len();
        let batch = self.workers[worker].0.recv().ok()?;
        self.next += 1;
        Some(batch)
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        for (receiver, handle) in self.workers.drain(..) {
            drop(receiver); // A blocked send now fails and the worker returns.
            let _ = handle.join();
        }
    }
}
