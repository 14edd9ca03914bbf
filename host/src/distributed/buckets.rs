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
    pub fn average(&self, params: &[Tensor], dist: &Distributed) -> Result<()> {
        let world = dist.world_size() as f64;
        let flats: Vec<Tensor> = self
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
        let refs: Vec<&Tensor> = flats.iter().collect();
        dist.all_reduce_sum(&refs, "the gradient all-reduce")?;
        tch::no_grad(|| {
            for (bucket, mut flat) in self.buckets.iter().zip(flats) {
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
        });
        Ok(())
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
