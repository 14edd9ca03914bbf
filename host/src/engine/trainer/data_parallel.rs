//! What the trainer does differently in a distributed run: gradients averaged across the
//! ranks, counts and losses summed, and one decision for all ranks on when to log, save,
//! evaluate or stop (a callback or a signal on one rank must not leave the others waiting
//! in a collective).

use std::sync::atomic::Ordering;

use anyhow::Result;
use tch::{Kind, Tensor};

use super::Trainer;
use crate::config::ResolvedConfig;
use crate::engine::data;
use crate::engine::distributed::{self, Distributed, GradientBuckets};
use crate::engine::optim::Param;

/// A distributed run's process group, the gradient buckets it all-reduces, and the stop
/// signal the ranks agreed on.
pub(super) struct DataParallel {
    pub(super) group: Distributed,
    buckets: GradientBuckets,
    /// The stop signal all ranks agreed on (a signal may reach the ranks at different
    /// steps).
    agreed_signal: usize,
    /// Whether any rank's loss was not finite in the last optimizer step.
    pub(super) any_loss_nonfinite: bool,
}

impl DataParallel {
    /// Starts every rank from rank 0's weights (as DDP) and points the gradients into
    /// buckets that all-reduce during backward.
    pub(super) fn start(group: Distributed, params: &[Param], config: &ResolvedConfig) -> Result<Self> {
        broadcast_parameters(&group, params, "the parameter broadcast")?;
        let tensors: Vec<Tensor> = params.iter().map(|p| p.tensor.shallow_clone()).collect();
        // Three slots ride along each all-reduce: whether a rank got SIGINT or SIGTERM, and
        // whether its loss was not finite.
        let mut buckets = GradientBuckets::new(&tensors, config.distributed.bucket_cap_bytes, 3)?;
        // With gradient checkpointing the backward pass runs block by block, and a tied
        // weight's gradient arrives in two parts: the buckets all-reduce after it instead.
        if !config.args.gradient_checkpointing {
            buckets.overlap_with_backward(&tensors, &group)?;
        }
        Ok(Self { group, buckets, agreed_signal: 0, any_loss_nonfinite: false })
    }

    pub(super) fn rank(&self) -> usize {
        self.group.rank()
    }

    pub(super) fn local_rank(&self) -> usize {
        self.group.env.local_rank
    }

    pub(super) fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Records the stop signal all ranks agreed on (SIGINT wins over SIGTERM).
    fn agree_on_signal(&mut self, interrupt: bool, terminate: bool) {
        if interrupt {
            self.agreed_signal = libc::SIGINT as usize;
        } else if terminate && self.agreed_signal == 0 {
            self.agreed_signal = libc::SIGTERM as usize;
        }
    }
}

/// Copies rank 0's values of `params` to every rank.
fn broadcast_parameters(dist: &Distributed, params: &[Param], what: &str) -> Result<()> {
    let tensors: Vec<&Tensor> = params.iter().map(|p| &p.tensor).collect();
    tch::no_grad(|| dist.broadcast_from_zero(&tensors, what))
}

impl Trainer {
    /// `value` summed over the ranks (itself without distribution).
    pub(super) fn sum_across_ranks(&self, value: f64, what: &str) -> Result<f64> {
        let Some(dp) = &self.dist else { return Ok(value) };
        let total = distributed::scalar(value, self.device);
        dp.group.all_reduce_sum(&[&total], what)?;
        Ok(total.double_value(&[]))
    }

    /// After the last backward pass of an optimizer step: every gradient becomes its mean
    /// over the ranks; whether any rank was asked to stop by a signal, or saw a loss that
    /// is not finite, came along, so that all ranks decide the same.
    pub(super) fn average_gradients(&mut self) -> Result<()> {
        let Some(dp) = &mut self.dist else { return Ok(()) };
        let agreed = dp.buckets.average(&dp.group)?;
        dp.agree_on_signal(agreed[0] > 0.0, agreed[1] > 0.0);
        dp.any_loss_nonfinite = agreed[2] > 0.0;
        Ok(())
    }

    /// Before the last backward pass of an optimizer step: lets the gradient buckets
    /// all-reduce during it, with this rank's stop signal and non-finite loss riding along
    /// (the latter stays on the device: no wait).
    pub(super) fn arm_gradient_sync(&self) -> Result<()> {
        let Some(dp) = &self.dist else { return Ok(()) };
        let signals = Tensor::from_slice(&self.signal_flags()).to_device(self.device);
        let nonfinite = self.meter.step_nonfinite.to_kind(Kind::Double).view([1]);
        dp.buckets.arm(&Tensor::cat(&[signals, nonfinite], 0))
    }

    /// The loss summed since the last log, over all ranks (each rank's loss is its share).
    /// HF's `store_flos`: adds every rank's floating-point operations since the last call
    /// to `total_flos`.
    pub(super) fn store_flos(&mut self) -> Result<()> {
        let local = std::mem::take(&mut self.meter.current_flos);
        let all = match &self.dist {
            None => local,
            Some(dp) => {
                let total = Tensor::from(local).to_kind(Kind::Double).to_device(self.device);
                dp.group.all_reduce_sum(&[&total], "summing the floating-point operations")?;
                total.double_value(&[])
            }
        };
        self.run.state.total_flos += all;
        Ok(())
    }

    /// HF's `include_num_input_tokens_seen`: the input tokens of a micro-batch (all, or
    /// without padding); 0 when not counting or the batch has no token ids. The examples'
    /// lengths counted at load give the non-padding tokens without a device read.
    pub(super) fn input_tokens(&self, indices: &Tensor, batch: &data::Batch) -> i64 {
        let Some(ids) = batch.get("input_ids") else { return 0 };
        match self.config.args.include_num_input_tokens_seen.as_str() {
            "all" => ids.numel() as i64,
            "non_padding" => match (batch.get("attention_mask"), self.train.pad_token) {
                (Some(mask), _) => match self.train.non_padding_tokens(indices) {
                    Some(tokens) => tokens,
                    None => mask.sum(Kind::Int64).int64_value(&[]),
                },
                (None, Some(pad)) => ids.ne(pad).sum(Kind::Int64).int64_value(&[]),
                (None, None) => ids.numel() as i64,
            },
            _ => 0,
        }
    }

    /// After an optimizer step: every rank's input tokens of the step into the state.
    pub(super) fn add_input_tokens_seen(&mut self) -> Result<()> {
        if self.config.args.include_num_input_tokens_seen == "no" {
            return Ok(());
        }
        let local = std::mem::take(&mut self.meter.current_tokens);
        let all = match &self.dist {
            None => local,
            Some(dp) => {
                let total = Tensor::from(local).to_device(self.device);
                dp.group.all_reduce_sum(&[&total], "summing the input tokens seen")?;
                total.int64_value(&[])
            }
        };
        self.run.state.num_input_tokens_seen += all;
        Ok(())
    }

    pub(super) fn loss_since_log_all_ranks(&self) -> Result<f64> {
        let Some(dp) = &self.dist else { return Ok(self.meter.since_log.double_value(&[])) };
        let total = self.meter.since_log.to_kind(Kind::Double);
        dp.group.all_reduce_sum(&[&total], "summing the training loss")?;
        Ok(total.double_value(&[]))
    }

    /// Makes every rank take the same decisions: a control flag any rank's callbacks set,
    /// or a stop signal any rank received, holds for all. Without plugin callbacks the
    /// flags follow from the step alone, the same on every rank, and the signal came with
    /// the gradients: no collective is needed.
    pub(super) fn agree_on_control(&mut self) -> Result<()> {
        if self.dist.is_none() || !self.callbacks.has_callbacks() {
            return Ok(());
        }
        let control = &self.callbacks.control;
        let flags = [
            control.should_training_stop,
            control.should_epoch_stop,
            control.should_save,
            control.should_evaluate,
            control.should_log,
        ];
        let mut values: Vec<f64> = flags.iter().map(|&flag| flag as u8 as f64).collect();
        values.extend(self.signal_flags());
        let agreed = Tensor::from_slice(&values).to_device(self.device);
        let Some(dp) = &mut self.dist else { return Ok(()) };
        dp.group.all_reduce_max(&[&agreed], "agreeing on the next step")?;
        let agreed: Vec<bool> =
            Vec::<f64>::try_from(&agreed.to_device(tch::Device::Cpu))?.into_iter().map(|v| v > 0.0).collect();
        dp.agree_on_signal(agreed[5], agreed[6]);
        let control = &mut self.callbacks.control;
        control.should_training_stop = agreed[0];
        control.should_epoch_stop = agreed[1];
        control.should_save = agreed[2];
        control.should_evaluate = agreed[3];
        control.should_log = agreed[4];
        Ok(())
    }

    /// The signal that stops the run now: in a distributed run only the one all ranks
    /// agreed on (a signal may reach the ranks at different steps).
    pub(super) fn stop_requested(&self) -> usize {
        match &self.dist {
            Some(dp) => dp.agreed_signal,
            None => self.stop_signal.load(Ordering::SeqCst),
        }
    }

    /// The label items of the optimizer step's micro-batches on every rank: each rank
    /// holds all the labels and knows every rank's batches, so no collective is needed.
    pub(super) fn global_label_items(&self, shards: &[Vec<Tensor>], first: usize, count: usize) -> i64 {
        shards
            .iter()
            .flat_map(|batches| &batches[first..first + count])
            .map(|indices| self.train.label_items(indices))
            .sum()
    }

    /// Sums evaluation totals (tensors of any shape) over the ranks, in place.
    pub(super) fn sum_tensors_across_ranks(&self, tensors: &[&Tensor], what: &str) -> Result<()> {
        match &self.dist {
            Some(dp) => dp.group.all_reduce_sum(tensors, what),
            None => Ok(()),
        }
    }

    /// The block of the evaluation set this rank evaluates: (start, len).
    pub(super) fn eval_share(&self) -> (usize, usize) {
        match &self.dist {
            Some(dp) => distributed::eval_block(self.eval.len(), dp.rank(), dp.world_size()),
            None => (0, self.eval.len()),
        }
    }

    /// Rank 0's parameters on every rank (after rank 0 alone loaded weights).
    pub(super) fn share_rank_zero_weights(&self) -> Result<()> {
        let Some(dp) = &self.dist else { return Ok(()) };
        broadcast_parameters(&dp.group, self.optimizer.params(), "sharing the best model")
    }

    /// (this rank, the world size): (0, 1) without distribution.
    pub(super) fn rank_and_world(&self) -> (usize, usize) {
        self.dist.as_ref().map_or((0, 1), |dp| (dp.rank(), dp.world_size()))
    }

    /// Whether this rank was asked to stop by SIGINT, and by SIGTERM, as 0 or 1 (to sum or
    /// take the largest across ranks).
    fn signal_flags(&self) -> [f64; 2] {
        let signal = self.stop_signal.load(Ordering::SeqCst) as i32;
        [(signal == libc::SIGINT) as u8 as f64, (signal == libc::SIGTERM) as u8 as f64]
    }

    /// Every rank's random generator states, in rank order (this rank's alone without
    /// distribution), for a checkpoint.
    pub(super) fn gather_rng_states(
        &self,
        mine: Vec<(String, Tensor)>,
        step: i64,
    ) -> Result<Vec<Vec<(String, Tensor)>>> {
        let Some(dp) = &self.dist else { return Ok(vec![mine]) };
        let as_bytes: Vec<(String, Vec<u8>)> =
            mine.iter().map(|(name, t)| Ok((name.clone(), Vec::<u8>::try_from(t)?))).collect::<Result<_>>()?;
        let all = dp.group.gather_bytes(&format!("rng/{step}"), &serde_json::to_vec(&as_bytes)?)?;
        all.iter()
            .map(|bytes| {
                let states: Vec<(String, Vec<u8>)> = serde_json::from_slice(bytes)?;
                Ok(states.into_iter().map(|(name, b)| (name, Tensor::from_slice(&b))).collect())
            })
            .collect()
    }
}
