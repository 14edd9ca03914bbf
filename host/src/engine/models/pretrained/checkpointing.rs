//! Gradient checkpointing (transformers' `gradient_checkpointing`): in training, the
//! transformer blocks run without keeping their activations; only each block's input is
//! kept. After the loss's backward pass has reached the output of the last block, the
//! blocks are run again one at a time, last first, with gradients, and each one's backward
//! pass is run with the gradient that came from above; the random generator is set back to
//! where it was before the block's first run, so dropout draws the same masks.
//!
//! tch has no `torch.utils.checkpoint` (an autograd Function calling back into Rust); this
//! splits the backward pass at the block boundaries instead, which gives the same
//! gradients with no C++ in between. The parameter gradients accumulate as in one pass.

use std::cell::RefCell;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::engine::ops::attention::Mask;
use crate::engine::ops::rope::RopeTables;
use crate::engine::rng;

/// What every block of one forward pass shares, computed once for all of them.
#[derive(Debug)]
pub struct Context {
    /// The attention mask of each attention window the blocks use (None: no window).
    pub masks: Vec<(Option<i64>, Mask)>,
    /// RoPE's tables, one per set of frequencies the model has (none without rotary
    /// positions).
    pub rotary: Vec<RopeTables>,
    /// Training mode: dropout on.
    pub train: bool,
}

impl Context {
    /// One mask for every block, no rotary positions.
    pub fn plain(mask: Mask, train: bool) -> Self {
        Self { masks: vec![(None, mask)], rotary: Vec::new(), train }
    }

    /// The mask of the blocks with attention window `window`.
    pub fn mask(&self, window: Option<i64>) -> &Mask {
        let found = self.masks.iter().find(|(w, _)| *w == window);
        &found.expect("a mask is made for every window the blocks use").1
    }
}

/// A stack of transformer blocks.
pub trait Blocks {
    fn count(&self) -> usize;
    /// Block `index` over hidden states `x`.
    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor;
}

/// Runs a model's blocks, with or without checkpointing.
#[derive(Debug, Default)]
pub struct Recompute {
    enabled: bool,
    pending: RefCell<Option<Pending>>,
}

/// A checkpointed forward pass waiting for its backward pass.
#[derive(Debug)]
struct Pending {
    context: Context,
    /// Each block's input (detached) and the generator state before it ran.
    inputs: Vec<(Tensor, Tensor)>,
    /// The blocks' input with its graph (to the embeddings).
    embedded: Tensor,
    /// The last block's output as a leaf: where the loss's backward pass stops.
    output: Tensor,
}

impl Recompute {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, pending: RefCell::new(None) }
    }

    /// The blocks over `x`: plainly, or, when checkpointing a training pass, keeping only
    /// each block's input.
    pub fn run(&self, blocks: &dyn Blocks, x: Tensor, context: Context) -> Tensor {
        if !(self.enabled && context.train) {
            let mut x = x;
            for i in 0..blocks.count() {
                x = blocks.block(i, &x, &context);
            }
            return x;
        }
        let device = x.device();
        let mut inputs = Vec::with_capacity(blocks.count());
        let mut h = x.detach();
        for i in 0..blocks.count() {
            let generator = generator_state(device);
            let next = tch::no_grad(|| blocks.block(i, &h, &context));
            inputs.push((h, generator));
            h = next;
        }
        let output = h.set_requires_grad(true);
        *self.pending.borrow_mut() = Some(Pending { context, inputs, embedded: x, output: output.shallow_clone() });
        output
    }

    /// After the loss's backward pass: the backward pass through the blocks, recomputing
    /// each, then into the embeddings. Does nothing when no checkpointed pass waits.
    pub fn backward(&self, blocks: &dyn Blocks) -> Result<()> {
        let Some(pending) = self.pending.borrow_mut().take() else { return Ok(()) };
        let mut grad = pending.output.grad();
        if !grad.defined() {
            return Ok(()); // The loss did not depend on the model's output.
        }
        let device = pending.output.device();
        let after = generator_state(device);
        for i in (0..blocks.count()).rev() {
            let (input, generator) = &pending.inputs[i];
            rng::set_state(device, generator)?;
            let x = input.detach().set_requires_grad(true);
            let y = blocks.block(i, &x, &pending.context);
            backward_from(&y, &grad)?;
            grad = x.grad();
            if !grad.defined() {
                break;
            }
        }
        rng::set_state(device, &after)?;
        if grad.defined() && pending.embedded.requires_grad() {
            backward_from(&pending.embedded, &grad)?;
        }
        Ok(())
    }
}

/// The backward pass from `y` with `grad` as its incoming gradient: sum(y * grad) has
/// exactly `grad` as its gradient with respect to y.
fn backward_from(y: &Tensor, grad: &Tensor) -> Result<()> {
    let product = if y.kind() == grad.kind() { y * grad } else { y * grad.to_kind(y.kind()) };
    product.sum(Kind::Float).f_backward()?;
    Ok(())
}

/// The generator dropout draws from on `device`, to replay it. libtorch always has one;
/// failing to read it is a bug, not something to train on without (the recomputed
/// dropout masks would differ).
fn generator_state(device: Device) -> Tensor {
    rng::state(device).expect("reading the random generator state for gradient checkpointing")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two blocks x + dropout(tanh(x W)) over parameters that collect gradients.
    struct Toy {
        weights: Vec<Tensor>,
    }

    impl Blocks for Toy {
        fn count(&self) -> usize {
            self.weights.len()
        }

        fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor {
            x + x.matmul(&self.weights[index]).tanh().dropout(0.3, context.train)
        }
    }

    fn run(checkpointing: bool) -> (Vec<Tensor>, bool) {
        tch::manual_seed(5);
        let toy = Toy {
            weights: (0..2)
                .map(|_| Tensor::randn([6, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true))
                .collect(),
        };
        let embedding = Tensor::randn([6, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let x = Tensor::ones([4, 6], (Kind::Float, Device::Cpu)).matmul(&embedding);
        let recompute = Recompute::new(checkpointing);
        let context = Context::plain(Mask::All, true);
        let out = recompute.run(&toy, x, context);
        out.pow_tensor_scalar(2).sum(Kind::Float).backward();
        let blocks_had_gradients = toy.weights[0].grad().defined();
        recompute.backward(&toy).unwrap();
        let mut grads: Vec<Tensor> = toy.weights.iter().map(|w| w.grad()).collect();
        grads.push(embedding.grad());
        (grads, blocks_had_gradients)
    }

    #[test]
    fn the_recomputed_backward_pass_gives_the_plain_gradients_with_dropout() {
        let _generator = crate::engine::rng::lock_generator();
        let (plain, plain_early) = run(false);
        let (recomputed, recomputed_early) = run(true);
        assert!(plain_early, "the plain pass reaches the blocks in one backward pass");
        assert!(!recomputed_early, "the checkpointed pass kept no graph through the blocks");
        for (a, b) in plain.iter().zip(&recomputed) {
            assert!(b.defined(), "every parameter gets its gradient");
            let difference = (a - b).abs().max().double_value(&[]);
            assert!(difference <= 1e-6, "gradients differ by {difference}");
        }
    }
}
