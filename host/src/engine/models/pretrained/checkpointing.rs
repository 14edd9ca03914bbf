//! Gradient checkpointing (transformers' `gradient_checkpointing`): in training, the
//! transformer blocks run without keeping their activations; only each block's input is
//! kept. Each block runs inside an autograd function of the native shim
//! (native/checkpoint.cpp, torch.utils.checkpoint's reentrant form): its backward runs the
//! block again with a graph, with the random generator set back to where it was before
//! the first run (so dropout draws the same masks) and autocast as it was, and
//! backpropagates through it. The loss's one backward pass thus covers every block; the
//! parameter gradients accumulate as in a plain pass.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use anyhow::Result;
use tch::{Kind, Tensor};

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

thread_local! {
    /// While [`traced`] runs: the blocks' input and each block's output, by name.
    static TRACE: RefCell<Option<Vec<(String, Tensor)>>> = const { RefCell::new(None) };
}

/// Runs `work` and returns, with its result, the hidden states between the blocks of the
/// forward passes it made ("embeddings" for the blocks' input, "layers.N" for block N's
/// output): what per-layer golden tests compare, so that a port's mistake names its layer.
pub fn traced<R>(work: impl FnOnce() -> R) -> (R, Vec<(String, Tensor)>) {
    TRACE.with(|trace| *trace.borrow_mut() = Some(Vec::new()));
    let result = work();
    let recorded = TRACE.with(|trace| trace.borrow_mut().take()).unwrap_or_default();
    (result, recorded)
}

fn record(name: impl FnOnce() -> String, x: &Tensor) {
    TRACE.with(|trace| {
        if let Some(recorded) = trace.borrow_mut().as_mut() {
            recorded.push((name(), x.detach().copy()));
        }
    });
}

/// A stack of transformer blocks.
pub trait Blocks {
    fn count(&self) -> usize;
    /// Block `index` over hidden states `x`.
    fn block(&self, index: usize, x: &Tensor, context: &Context) -> Tensor;
}

/// Runs a model's blocks, with or without checkpointing.
#[derive(Default)]
pub struct Recompute {
    enabled: bool,
    /// The last checkpointed forward pass's blocks, which its backward pass calls back
    /// (boxed: the shim holds their addresses, which must not move as the list grows).
    #[allow(clippy::vec_box)]
    pending: RefCell<Vec<Box<BlockCall>>>,
}

impl std::fmt::Debug for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Recompute").field("enabled", &self.enabled).finish()
    }
}

/// One checkpointed block of a forward pass, as its backward pass needs it.
struct BlockCall {
    /// The network the block belongs to; it outlives its forward passes' graphs (it lives
    /// in the trainer, and a graph is backpropagated before the next forward pass).
    blocks: *const (dyn Blocks + 'static),
    context: Rc<Context>,
    index: usize,
    /// The generator state before the block's first run.
    generator: RefCell<Option<Tensor>>,
}

impl Recompute {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, pending: RefCell::new(Vec::new()) }
    }

    /// The blocks over `x`: plainly, or, when checkpointing a training pass, each in the
    /// shim's checkpoint function.
    pub fn run(&self, blocks: &dyn Blocks, x: Tensor, context: Context) -> Tensor {
        if !(self.enabled && context.train) {
            record(|| "embeddings".to_owned(), &x);
            let mut x = x;
            for i in 0..blocks.count() {
                x = blocks.block(i, &x, &context);
                record(|| format!("layers.{i}"), &x);
            }
            return x;
        }
        // A frozen input (LoRA over frozen embeddings) still needs the blocks' backward
        // pass, for the adapters inside them.
        let mut h = if x.requires_grad() { x } else { x.detach().set_requires_grad(true) };
        let context = Rc::new(context);
        let count = blocks.count();
        // SAFETY: only the lifetime is erased; see BlockCall::blocks.
        let blocks: *const (dyn Blocks + 'static) = unsafe { std::mem::transmute(blocks as *const dyn Blocks) };
        let mut calls = Vec::with_capacity(count);
        for index in 0..count {
            let call =
                Box::new(BlockCall { blocks, context: Rc::clone(&context), index, generator: RefCell::default() });
            let handle = &*call as *const BlockCall as *mut c_void;
            h = match crate::native::checkpoint(&h, run_block, handle) {
                Ok(out) => out,
                // A libtorch failure in the block (out of memory, say) goes on as the
                // panic the block raised, which the trainer's guard reports.
                Err(message) => std::panic::resume_unwind(Box::new(message)),
            };
            calls.push(call);
        }
        *self.pending.borrow_mut() = calls;
        h
    }
}

impl BlockCall {
    /// The block's output (the forward: the shim runs it without a graph), or with
    /// `grad_output` the gradient of its input (the backward).
    fn run(&self, input: Tensor, grad_output: Option<Tensor>) -> Result<Tensor> {
        // SAFETY: see BlockCall::blocks.
        let blocks = unsafe { &*self.blocks };
        let device = input.device();
        let Some(grad) = grad_output else {
            *self.generator.borrow_mut() = Some(rng::state(device)?);
            return Ok(blocks.block(self.index, &input, &self.context));
        };
        let after = rng::state(device)?;
        let before = self.generator.borrow().as_ref().map(Tensor::shallow_clone);
        rng::set_state(device, &before.expect("the forward pass saved the generator state"))?;
        let x = input.detach().set_requires_grad(true);
        let result = tch::with_grad(|| backward_from(&blocks.block(self.index, &x, &self.context), &grad));
        rng::set_state(device, &after)?;
        result?;
        let grad_input = x.grad();
        Ok(if grad_input.defined() { grad_input } else { x.zeros_like() })
    }
}

/// The shim's call back into a [`BlockCall`]: panics and errors become its message.
unsafe extern "C" fn run_block(
    context: *mut c_void,
    input: *mut c_void,
    grad_output: *mut c_void,
    out: *mut *mut c_void,
    error: *mut c_char,
    error_len: usize,
) -> i32 {
    // SAFETY: `context` is a BlockCall that Recompute keeps alive; the tensors are the
    // shim's, borrowed for this call (clone_from_ptr makes a handle of our own).
    let call = &*(context as *const BlockCall);
    let borrow = |ptr: *mut c_void| Tensor::clone_from_ptr(ptr as *mut torch_sys::C_tensor);
    let (input, grad_output) = (borrow(input), (!grad_output.is_null()).then(|| borrow(grad_output)));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| call.run(input, grad_output)));
    let message = match outcome {
        Ok(Ok(mut tensor)) => {
            // The shim takes this handle over (and deletes it).
            *out = tensor.as_mut_ptr() as *mut c_void;
            std::mem::forget(tensor);
            return 0;
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(payload) => crate::engine::libtorch::panic_text(payload.as_ref()),
    };
    let bytes = message.as_bytes();
    let length = bytes.len().min(error_len.saturating_sub(1));
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), error as *mut u8, length);
    *error.add(length) = 0;
    1
}

/// The backward pass from `y` with `grad` as its incoming gradient: sum(y * grad) has
/// exactly `grad` as its gradient with respect to y.
fn backward_from(y: &Tensor, grad: &Tensor) -> Result<()> {
    let product = if y.kind() == grad.kind() { y * grad } else { y * grad.to_kind(y.kind()) };
    product.sum(Kind::Float).f_backward()?;
    Ok(())
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

    fn run(checkpointing: bool) -> Vec<Tensor> {
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
        // One backward pass, through the recomputed blocks too.
        out.pow_tensor_scalar(2).sum(Kind::Float).backward();
        let mut grads: Vec<Tensor> = toy.weights.iter().map(|w| w.grad()).collect();
        grads.push(embedding.grad());
        grads
    }

    #[test]
    fn the_recomputed_backward_pass_gives_the_plain_gradients_with_dropout() {
        let _generator = crate::engine::rng::lock_generator();
        let (plain, recomputed) = (run(false), run(true));
        for (a, b) in plain.iter().zip(&recomputed) {
            assert!(b.defined(), "every parameter gets its gradient");
            let difference = (a - b).abs().max().double_value(&[]);
            assert!(difference <= 1e-6, "gradients differ by {difference}");
        }
    }
}
