//! Gradient averaging in flattened buckets, as DDP with `gradient_as_bucket_view`: the
//! parameters are grouped in reverse order (the order backward produces their gradients)
//! into buckets of at most `cap` bytes of one dtype and device, and each parameter's
//! gradient is made a slice of its bucket, so that backward writes straight into the
//! buckets and each bucket is one all-reduce, with no copying in or out. With a reducer
//! attached, a bucket starts its all-reduce as soon as backward has filled it, while
//! backward goes on with the earlier layers (DDP's overlap).

use anyhow::Result;
use tch::Tensor;

use super::Distributed;
use crate::native::{self, Reducer};

pub struct GradientBuckets {
    /// Parameter indices per bucket.
    buckets: Vec<Vec<usize>>,
    /// One flat tensor per bucket; the parameters' gradients are slices of it. The first
    /// has `extra` more elements at its end for values that ride along.
    flats: Vec<Tensor>,
    extra: i64,
    /// All-reduces the buckets during backward once attached.
    reducer: Option<Reducer>,
}

/// Groups parameter indices into buckets: reverse order, one dtype and device per bucket,
/// at most `cap_bytes` each (a larger parameter gets a bucket of its own).
fn plan(params: &[Tensor], cap_bytes: usize) -> Vec<Vec<usize>> {
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
    buckets
}

impl GradientBuckets {
    /// Makes the buckets for `params` (the optimizer's order) and points every
    /// parameter's gradient into them; `extra` values can ride along each all-reduce.
    pub fn new(params: &[Tensor], cap_bytes: usize, extra: usize) -> Result<Self> {
        let buckets = plan(params, cap_bytes);
        let mut flats = Vec::new();
        for (b, bucket) in buckets.iter().enumerate() {
            let length: i64 = bucket.iter().map(|&i| params[i].numel() as i64).sum();
            let first = &params[bucket[0]];
            let padding = if b == 0 { extra as i64 } else { 0 };
            let flat = Tensor::zeros([length + padding], (first.kind(), first.device()));
            let mut offset = 0;
            for &i in bucket {
                let n = params[i].numel() as i64;
                let slice = flat.narrow(0, offset, n).view_(params[i].size());
                let existing = params[i].grad();
                if existing.defined() {
                    tch::no_grad(|| slice.shallow_clone().copy_(&existing));
                }
                native::set_grad(&params[i], &slice).map_err(|e| {
                    anyhow::anyhow!("cannot point the gradient of a parameter into its all-reduce bucket: {e}")
                })?;
                offset += n;
            }
            flats.push(flat);
        }
        Ok(Self { buckets, flats, extra: extra as i64, reducer: None })
    }

    /// Makes the buckets all-reduce during backward, each as soon as it is filled.
    pub fn overlap_with_backward(&mut self, params: &[Tensor], dist: &Distributed) -> Result<()> {
        let ordered: Vec<&Tensor> = self.buckets.iter().flatten().map(|&i| &params[i]).collect();
        let sizes: Vec<usize> = self.buckets.iter().map(Vec::len).collect();
        self.reducer = Some(dist.reducer(&ordered, &self.flats.iter().collect::<Vec<_>>(), &sizes)?);
        Ok(())
    }

    /// Before the last backward pass of an optimizer step: sets the values that ride along
    /// and lets the buckets all-reduce as backward fills them.
    pub fn arm(&self, extra: &Tensor) -> Result<()> {
        anyhow::ensure!(extra.numel() as i64 == self.extra, "{} extra values for {} slots", extra.numel(), self.extra);
        if let Some(first) = self.flats.first() {
            let length = first.size()[0];
            let slots = first.narrow(0, length - self.extra, self.extra);
            let values = extra.to_kind(first.kind()).to_device(first.device());
            tch::no_grad(|| slots.shallow_clone().copy_(&values));
        }
        if let Some(reducer) = &self.reducer {
            reducer.arm();
        }
        Ok(())
    }

    /// After that backward pass: replaces each gradient by its mean over the ranks (SUM,
    /// then divided by the world size: Gloo has no AVG) and returns the values given to
    /// [`arm`](Self::arm), summed over the ranks (sparing them a collective of their own).
    pub fn average(&self, dist: &Distributed) -> Result<Vec<f64>> {
        let Some(first) = self.flats.first() else { return Ok(Vec::new()) };
        match &self.reducer {
            Some(reducer) => dist.finish(reducer)?,
            None => dist.all_reduce_sum(&self.flats.iter().collect::<Vec<_>>(), "the gradient all-reduce")?,
        }
        let length = first.size()[0];
        let slots = first.narrow(0, length - self.extra, self.extra);
        let summed = Vec::<f64>::try_from(&slots.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))?;
        let world = dist.world_size() as f64;
        tch::no_grad(|| {
            for flat in &self.flats {
                let _ = flat.shallow_clone().g_div_scalar_(world);
            }
        });
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
        assert_eq!(plan(&params, 100), vec![vec![4], vec![3], vec![2], vec![1, 0]]);
    }

    #[test]
    fn backward_writes_into_the_buckets() {
        let a = Tensor::ones([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let buckets = GradientBuckets::new(&[a.shallow_clone(), b.shallow_clone()], 1 << 20, 2).unwrap();
        assert_eq!(buckets.flats.len(), 1);
        ((&a * 2.0).sum(Kind::Float) + (&b * 3.0).sum(Kind::Float)).backward();
        // Reverse order: b's gradient first, then a's, then the two extra slots.
        let flat = Vec::<f32>::try_from(&buckets.flats[0]).unwrap();
        assert_eq!(flat, [3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0]);
        assert_eq!(a.grad().size(), [2, 3]);
    }
}
