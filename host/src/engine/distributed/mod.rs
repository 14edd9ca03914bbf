//! Data-parallel training over PyTorch's c10d: the ranks meet at a TCPStore (torchrun's
//! contract), then share a Gloo or NCCL process group for the collectives the trainer
//! needs. A collective that fails is followed by a roll call on the store, so that the
//! error names the rank that died or hung instead of only a socket error.

use std::time::{Duration, Instant};

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::error::InputError;

mod buckets;
pub mod env;

use crate::native::{Group, Reducer, DISTRIBUTED_BUILT, NCCL_BUILT, WITHOUT_DISTRIBUTED};
pub use buckets::GradientBuckets;
pub use env::WorldEnv;

/// How long a rank that saw a collective fail waits for the others to answer the roll call.
const ROLL_CALL: Duration = Duration::from_secs(5);

/// The c10d backend: Gloo (CPU, and CUDA too) or NCCL (CUDA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn parse(name: &str) -> Result<Self, InputError> {
        match name {
            "gloo" => Ok(Self::Gloo),
            "nccl" => Ok(Self::Nccl),
            other => Err(InputError::new(format!("ddp_backend '{other}' is not one of: gloo, nccl"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        }
    }
}

/// How a distributed run communicates, as the arguments ask (ddp_*).
#[derive(Debug, Clone, PartialEq)]
pub struct DistributedSpec {
    /// `None`: NCCL on CUDA where this host was built with it, else Gloo.
    pub backend: Option<Backend>,
    /// How long to wait for the other ranks, at the rendezvous and in each collective.
    pub timeout: Duration,
    /// Gradients are all-reduced in flat buckets of at most this many bytes.
    pub bucket_cap_bytes: usize,
}

/// This process's membership of a distributed run.
pub struct Distributed {
    pub env: WorldEnv,
    group: Group,
    /// Keys of this attempt (torchrun restarts reuse its store).
    prefix: String,
    /// How long to wait for the other ranks (ddp_timeout).
    timeout: Duration,
}

impl Distributed {
    /// Meets the other ranks: connects to the store, waits for every rank to arrive with
    /// the same `fingerprint` (of the training arguments), then starts the process group.
    pub fn connect(env: WorldEnv, device: Device, spec: &DistributedSpec, fingerprint: &str) -> Result<Self> {
        let timeout = spec.timeout;
        let backend = match spec.backend {
            Some(backend) => backend.name(),
            None if device.is_cuda() && DISTRIBUTED_BUILT && NCCL_BUILT => "nccl",
            None => "gloo",
        };
        if !DISTRIBUTED_BUILT {
            return Err(InputError::new(WITHOUT_DISTRIBUTED).into());
        }
        if backend == "nccl" && !device.is_cuda() {
            return Err(InputError::new("ddp_backend nccl needs a CUDA device; use gloo on CPU").into());
        }
        let at = format!("{}:{}", env.master_addr, env.master_port);
        let group = Group::connect(&env.master_addr, env.master_port, env.hosts_store(), env.world_size, timeout)
            .map_err(|e| {
                let host = if env.agent_store { "the torchrun agent" } else { "rank 0" };
                anyhow::anyhow!(
                    "rank {} could not reach the rendezvous store at {at} ({host} hosts it) within {} s: {e}",
                    env.rank,
                    timeout.as_secs()
                )
            })?;
        let restart = std::env::var("TORCHELASTIC_RESTART_COUNT").unwrap_or_else(|_| "0".to_owned());
        let prefix = format!("host/{restart}/");
        let this = Self { env, group, prefix, timeout };
        let missing = this.roll_call("arrived", fingerprint.as_bytes(), timeout)?;
        if !missing.is_empty() {
            anyhow::bail!(
                "{} never arrived at the rendezvous at {at} within {} s (ddp_timeout): start every rank, with the same MASTER_ADDR and MASTER_PORT",
                ranks(&missing),
                timeout.as_secs()
            );
        }
        if this.env.rank != 0 {
            let first = this.store_get("arrived/0", timeout)?.unwrap_or_default();
            if first != fingerprint.as_bytes() {
                return Err(InputError::new(format!(
                    "rank {}'s training arguments differ from rank 0's: give every rank the same flags and config",
                    this.env.rank
                ))
                .into());
            }
        }
        this.group
            .start_backend(backend, this.env.rank, this.env.world_size, timeout)
            .map_err(|e| anyhow::anyhow!("cannot start the {backend} process group on rank {}: {e}", this.env.rank))?;
        tracing::info!(
            "distributed: rank {} of {} (local {} of {}), {backend}, rendezvous at {at}",
            this.env.rank,
            this.env.world_size,
            this.env.local_rank,
            this.env.local_world_size
        );
        Ok(this)
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    /// Sums each tensor across ranks, in place. `what` names the step for errors.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor], what: &str) -> Result<()> {
        self.group.all_reduce_sum(tensors).map_err(|e| self.diagnose(what, e))
    }

    /// The largest value of each element across ranks, in place.
    pub fn all_reduce_max(&self, tensors: &[&Tensor], what: &str) -> Result<()> {
        self.group.all_reduce_max(tensors).map_err(|e| self.diagnose(what, e))
    }

    /// Copies rank 0's tensors to every rank, in place.
    pub fn broadcast_from_zero(&self, tensors: &[&Tensor], what: &str) -> Result<()> {
        self.group.broadcast(tensors, 0).map_err(|e| self.diagnose(what, e))
    }

    /// Buckets that all-reduce during backward (see [`GradientBuckets`]).
    fn reducer(&self, params: &[&Tensor], flats: &[&Tensor], sizes: &[usize]) -> Result<Reducer> {
        self.group.reducer(params, flats, sizes).map_err(anyhow::Error::msg)
    }

    /// Waits for the buckets' all-reduces of this step.
    fn finish(&self, reducer: &Reducer) -> Result<()> {
        reducer.finish().map_err(|e| self.diagnose("the gradient all-reduce", e))
    }

    /// Each rank's `bytes` under `key`, in rank order (every rank calls it; small values
    /// only: they travel through the store).
    pub fn gather_bytes(&self, key: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let timeout = self.timeout;
        let what = format!("sharing {key}");
        self.store_set(&format!("{key}/{}", self.env.rank), bytes).map_err(|e| self.diagnose(&what, e))?;
        (0..self.env.world_size)
            .map(|rank| match self.store_get(&format!("{key}/{rank}"), timeout) {
                Ok(Some(value)) => Ok(value),
                Ok(None) => {
                    Err(self.diagnose(&what, format!("rank {rank} did not answer within {} s", timeout.as_secs())))
                }
                Err(e) => Err(self.diagnose(&what, e.to_string())),
            })
            .collect()
    }

    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.group.set(&format!("{}{key}", self.prefix), value)
    }

    fn store_get(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>> {
        self.group.get(&format!("{}{key}", self.prefix), timeout).map_err(anyhow::Error::msg)
    }

    /// Puts this rank's name down under `topic`, then waits up to `timeout` for every
    /// other rank's; returns the ranks that did not come.
    fn roll_call(&self, topic: &str, value: &[u8], timeout: Duration) -> Result<Vec<usize>> {
        self.store_set(&format!("{topic}/{}", self.env.rank), value).map_err(anyhow::Error::msg)?;
        let deadline = Instant::now() + timeout;
        let mut absent = Vec::new();
        for rank in (0..self.env.world_size).filter(|&r| r != self.env.rank) {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            if self.store_get(&format!("{topic}/{rank}"), left)?.is_none() {
                absent.push(rank);
            }
        }
        Ok(absent)
    }

    /// Turns a failed collective into an error naming the rank that stopped answering: the
    /// ranks still alive answer a roll call on the store; if the store itself is gone, its
    /// host (rank 0, unless torchrun's agent hosts it) is the one that died.
    fn diagnose(&self, what: &str, error: String) -> anyhow::Error {
        let me = self.env.rank;
        match self.roll_call("failed", b"", ROLL_CALL) {
            Ok(missing) if !missing.is_empty() => anyhow::anyhow!(
                "{what} failed on rank {me}: {} stopped responding (died or hung): {error}",
                ranks(&missing)
            ),
            Err(_) if !self.env.agent_store && me != 0 => anyhow::anyhow!(
                "{what} failed on rank {me}: rank 0 stopped responding (died or hung; it hosts the rendezvous store): {error}"
            ),
            _ => anyhow::anyhow!("{what} failed on rank {me}: {error}"),
        }
    }
}

/// "rank 1" or "ranks 1, 3".
fn ranks(list: &[usize]) -> String {
    let names: Vec<String> = list.iter().map(usize::to_string).collect();
    format!("{} {}", if list.len() == 1 { "rank" } else { "ranks" }, names.join(", "))
}

/// The indices a rank trains on in one epoch, as PyTorch's DistributedSampler: the epoch's
/// order padded (repeating its start) to a multiple of the world size, then every
/// `world`-th index from `rank`. Rank r's k-th batch and the other ranks' k-th batches
/// together are the k-th global batch of a single process with `world` times the batch.
pub fn shard<T: Copy>(order: &[T], rank: usize, world: usize) -> Vec<T> {
    if world <= 1 || order.is_empty() {
        return order.to_vec();
    }
    let total = order.len().div_ceil(world) * world;
    (rank..total).step_by(world).map(|i| order[i % order.len()]).collect()
}

/// The contiguous block of `n` evaluation examples rank `rank` evaluates: (start, len).
pub fn eval_block(n: usize, rank: usize, world: usize) -> (usize, usize) {
    let start = n * rank / world;
    (start, n * (rank + 1) / world - start)
}

/// A scalar on `device` for reductions.
pub fn scalar(value: f64, device: Device) -> Tensor {
    Tensor::from(value).to_kind(Kind::Double).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_interleave_into_the_single_process_order() {
        let order: Vec<usize> = vec![7, 3, 9, 1, 5, 0, 8, 2];
        let (a, b) = (shard(&order, 0, 2), shard(&order, 1, 2));
        assert_eq!(a, [7, 9, 5, 8]);
        assert_eq!(b, [3, 1, 0, 2]);
        // Batches of 2 per rank: the first global batch is the first 4 of the order.
        let mut first: Vec<usize> = a[..2].iter().chain(&b[..2]).copied().collect();
        first.sort();
        assert_eq!(first, [1, 3, 7, 9]);
        // Padding repeats the start, as DistributedSampler.
        assert_eq!(shard(&[4, 5, 6], 1, 2), [5, 4]);
        assert_eq!(shard(&order, 0, 1), order);
    }

    #[test]
    fn eval_blocks_cover_the_set_once() {
        let blocks: Vec<(usize, usize)> = (0..3).map(|r| eval_block(10, r, 3)).collect();
        assert_eq!(blocks, [(0, 3), (3, 3), (6, 4)]);
    }

    #[test]
    fn rank_lists_read_as_words() {
        assert_eq!(ranks(&[1]), "rank 1");
        assert_eq!(ranks(&[1, 3]), "ranks 1, 3");
    }
}
