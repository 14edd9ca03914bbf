//! What the trainer does differently in a distributed run: gradients averaged across the
//! ranks, counts and losses summed, and one decision for all ranks on when to log, save,
//! evaluate or stop (a callback or a signal on one rank must not leave the others waiting
//! in a collective).

use std::sync::atomic::Ordering;

use anyhow::Result;
use tch::{Kind, Tensor};

use super::Trainer;
use crate::engine::data;
use crate::engine::distributed::Distributed;
use crate::engine::optim::Param;

/// Copies rank 0's values of `params` to every rank.
pub(super) fn broadcast_parameters(dist: &Distributed, params: &[Param], what: &str) -> Result<()> {
    let tensors: Vec<&Tensor> = params.iter().map(|p| &p.tensor).collect();
    tch::no_grad(|| dist.broadcast_from_zero(&tensors, what))
}

impl Trainer {
    /// `value` summed over the ranks (itself without distribution).
    pub(super) fn sum_across_ranks(&self, value: f64, what: &str) -> Result<f64> {
        let Some((dist, _)) = &self.dist else { return Ok(value) };
        let total = crate::engine::distributed::scalar(value, self.device);
        dist.all_reduce_sum(&[&total], what)?;
        Ok(total.double_value(&[]))
    }

    /// After the last backward pass of an optimizer step: every gradient becomes its mean
    /// over the ranks; whether any rank was asked to stop by a signal came along, so that
    /// all ranks stop at the same step.
    pub(super) fn average_gradients(&mut self) -> Result<()> {
        let Some((dist, buckets)) = &self.dist else { return Ok(()) };
        let agreed = buckets.average(dist)?;
        self.agree_on_signal(agreed[0] > 0.0, agreed[1] > 0.0);
        Ok(())
    }

    /// Before the last backward pass of an optimizer step: lets the gradient buckets
    /// all-reduce during it, with whether this rank got a stop signal riding along.
    pub(super) fn arm_gradient_sync(&self) -> Result<()> {
        let Some((_, buckets)) = &self.dist else { return Ok(()) };
        buckets.arm(&self.signal_flags())
    }

    /// Records the stop signal all ranks agreed on (SIGINT wins over SIGTERM).
    fn agree_on_signal(&mut self, interrupt: bool, terminate: bool) {
        if interrupt {
            self.agreed_signal = libc::SIGINT as usize;
        } else if terminate && self.agreed_signal == 0 {
            self.agreed_signal = libc::SIGTERM as usize;
        }
    }

    /// The loss summed since the last log, over all ranks (each rank's loss is its share).
    pub(super) fn loss_since_log_all_ranks(&self) -> Result<f64> {
        let Some((dist, _)) = &self.dist else { return Ok(self.progress.loss_since_log.double_value(&[])) };
        let total = self.progress.loss_since_log.to_kind(Kind::Double);
        dist.all_reduce_sum(&[&total], "summing the training loss")?;
        Ok(total.double_value(&[]))
    }

    /// Makes every rank take the same decisions: a control flag any rank's callbacks set,
    /// or a stop signal any rank received, holds for all. Without plugin callbacks the
    /// flags follow from the step alone, the same on every rank, and the signal came with
    /// the gradients: no collective is needed.
    pub(super) fn agree_on_control(&mut self) -> Result<()> {
        let Some((dist, _)) = &self.dist else { return Ok(()) };
        if !self.handler.has_callbacks() {
            return Ok(());
        }
        let control = &self.handler.control;
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
        dist.all_reduce_max(&[&agreed], "agreeing on the next step")?;
        let agreed: Vec<bool> =
            Vec::<f64>::try_from(&agreed.to_device(tch::Device::Cpu))?.into_iter().map(|v| v > 0.0).collect();
        let control = &mut self.handler.control;
        control.should_training_stop = agreed[0];
        control.should_epoch_stop = agreed[1];
        control.should_save = agreed[2];
        control.should_evaluate = agreed[3];
        control.should_log = agreed[4];
        self.agree_on_signal(agreed[5], agreed[6]);
        Ok(())
    }

    /// The signal that stops the run now: in a distributed run only the one all ranks
    /// agreed on (a signal may reach the ranks at different steps).
    pub(super) fn stop_requested(&self) -> usize {
        match self.dist {
            Some(_) => self.agreed_signal,
            None => self.stop_signal.load(Ordering::SeqCst),
        }
    }

    /// The label items of the optimizer step's micro-batches on every rank: each rank
    /// holds all the labels and knows every rank's batches, so no collective is needed.
    pub(super) fn global_label_items(&self, shards: &[Vec<Tensor>], first: usize, count: usize) -> i64 {
        let labels = self.train.labels();
        shards
            .iter()
            .flat_map(|batches| &batches[first..first + count])
            .map(|indices| data::count_label_items(&labels.index_select(0, &indices.to_device(labels.device()))))
            .sum()
    }

    /// Sums evaluation totals (tensors of any shape) over the ranks, in place.
    pub(super) fn sum_tensors_across_ranks(&self, tensors: &[&Tensor], what: &str) -> Result<()> {
        match &self.dist {
            Some((dist, _)) => dist.all_reduce_sum(tensors, what),
            None => Ok(()),
        }
    }

    /// The block of the evaluation set this rank evaluates: (start, len).
    pub(super) fn eval_share(&self) -> (usize, usize) {
        match &self.dist {
            Some((dist, _)) => crate::engine::distributed::eval_block(self.eval.len(), dist.rank(), dist.world_size()),
            None => (0, self.eval.len()),
        }
    }

    /// Rank 0's parameters on every rank (after rank 0 alone loaded weights).
    pub(super) fn share_rank_zero_weights(&self) -> Result<()> {
        let Some((dist, _)) = &self.dist else { return Ok(()) };
        broadcast_parameters(dist, self.optimizer.params(), "sharing the best model")
    }

    /// Whether this rank was asked to stop by SIGINT, and by SIGTERM, as 0 or 1 (to sum or
    /// take the largest across ranks).
    fn signal_flags(&self) -> [f64; 2] {
        let signal = self.stop_signal.load(Ordering::SeqCst) as i32;
        [(signal == libc::SIGINT) as u8 as f64, (signal == libc::SIGTERM) as u8 as f64]
    }

    pub(super) fn is_world_zero(&self) -> bool {
        self.state.is_world_process_zero
    }
}
