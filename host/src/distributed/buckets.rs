//! Gradient averaging in flattened buckets, as DDP: parameters grouped in reverse order (the
//! order backward produces their gradients) into buckets of at most `cap` bytes of one
//! dtype and device, each bucket one all-reduce instead of one per parameter.

use anyhow::Result;
use tch::Tensor;

use super::Distributed;

pub struct GradientBuckets {
    /// Parameter indices per bucket.
    buckets: Vec<Vec<usize>>,
}

impl GradientBuckets {
    /// Plans the buckets for `params` (the optimizer's order).
    pub fn plan(params: &[Tensor], cap_bytes: usize) -> Self {
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0usize;
        let mut kind = None;
        for (index, param) in params.iter().enumerate().rev() {
            let size = param.numel() * param.kind().elt_size_in_bytes();
            let this_kind = Some((param.kind(), param.device()));
            let fits = bytes + size <= cap_bytes && kind == this_kind;
            match buckets.last_mut() {
                Some(bucket) if fits => bucket.push(index),
                _ => {
                    buckets.push(vec![index]);
                    bytes = 0;
                    kind = this_kind;
                }
            }
            bytes += size;
        }
        Self { buckets }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Replaces each parameter's gradient by its mean over the ranks (SUM, then divided by
    /// the world size: Gloo has no AVG). A parameter without a gradient counts as zeros.
    /// `extra` values ride along in the first bucket and come back summed over the ranks,
    /// which spares a collective of their own.
    pub fn average(&self, params: &[Tensor], dist: &Distributed, extra: &[f64]) -> Result<Vec<f64>> {
        let world = dist.world_size() as f64;
        let mut flats: Vec<Tensor> = self
            .buckets
            .iter()
            .map(|bucket| {
                let pieces: Vec<Tensor> = bucket
                    .iter()
                    .map(|&i| {
                        let grad = params[i].grad();
                        if grad.defined() { grad } else { params[i].zeros_like() }.reshape([-1])
                    })
                    .collect();
                Tensor::cat(&pieces, 0)
            })
            .collect();
        let n_extra = extra.len() as i64;
        if let Some(first) = flats.first_mut() {
            let values = Tensor::from_slice(extra).to_kind(first.kind()).to_device(first.device());
            *first = Tensor::cat(&[&*first, &values], 0);
        }
        let refs: Vec<&Tensor> = flats.iter().collect();
        dist.all_reduce_sum(&refs, "the gradient all-reduce")?;
        let mut summed = Vec::new();
        tch::no_grad(|| -> Result<()> {
            for (b, (bucket, mut flat)) in self.buckets.iter().zip(flats).enumerate() {
                if b == 0 {
                    let length = flat.size()[0];
                    summed = Vec::<f64>::try_from(
                        &flat
                            .narrow(0, length - n_extra, n_extra)
                            .to_kind(tch::Kind::Double)
                            .to_device(tch::Device::Cpu),
                    )?;
                    flat = flat.narrow(0, 0, length - n_extra);
                }
                let _ = flat.g_div_scalar_(world);
                let mut offset = 0;
                for &i in bucket {
                    let mut grad = params[i].grad();
                    let n = params[i].numel() as i64;
                    if grad.defined() {
                        grad.copy_(&flat.narrow(0, offset, n).view_as(&grad));
                    }
                    offset += n;
                }
            }
            Ok(())
        })?;
        Ok(summed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn buckets_follow_backward_order_and_the_cap() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let params = [f(10), f(10), Tensor::zeros([4], (Kind::Double, Device::Cpu)), f(30), f(5)];
        // 4 bytes per float: a cap of 100 bytes holds 25 floats.
        let plan = GradientBuckets::plan(&params, 100);
        assert_eq!(plan.buckets, vec![vec![4], vec![3], vec![2], vec![1, 0]]);
        assert_eq!(plan.len(), 4);
    }
}
