//! Conversions between the ABI types and the types plugin authors use. The host and the
//! plugin adapters (`__private`) convert only through these functions.
//!
//! Tensors: a tch `Tensor` wraps a heap-allocated `torch::Tensor*`. Host and plugins link
//! the same libtorch, so a pointer from one side is a valid tensor on the other: autograd
//! graphs, devices and storage are shared, nothing is copied.

use abi_stable::std_types::{RSlice, RVec};
use tch::Tensor;

use super::{ControlBits, NamedTensor, OwnedTensor, StateFfi, StateIndex, TensorPtr};
use crate::{Tensors, TrainerControl, TrainerState};

/// Borrows a tensor for a call: the callee may read it or make new handles to it; the
/// caller keeps ownership.
pub fn borrow_ptr(tensor: &Tensor) -> TensorPtr {
    TensorPtr(tensor.as_ptr() as *mut std::ffi::c_void)
}

/// Gives up ownership of a tensor to the other side of the boundary.
pub fn into_ptr(mut tensor: Tensor) -> TensorPtr {
    let ptr = tensor.as_mut_ptr();
    std::mem::forget(tensor);
    TensorPtr(ptr as *mut std::ffi::c_void)
}

/// Takes ownership of a tensor handed over with [`into_ptr`].
///
/// # Safety
/// `ptr` must come from `into_ptr` and be taken exactly once.
pub unsafe fn take_ptr(ptr: TensorPtr) -> Tensor {
    Tensor::from_ptr(ptr.0 as *mut torch_sys::C_tensor)
}

/// A new handle to a borrowed tensor (a shallow clone: same storage, same autograd node).
///
/// # Safety
/// `ptr` must point to a live tensor for the duration of the call.
unsafe fn handle_to(ptr: TensorPtr) -> Tensor {
    Tensor::clone_from_ptr(ptr.0 as *mut torch_sys::C_tensor)
}

/// Borrowed views of named tensors for a call across the boundary; valid while `tensors`
/// lives.
pub fn tensor_views(tensors: &Tensors) -> Vec<NamedTensor<'_>> {
    tensors.iter().map(|(name, tensor)| NamedTensor { name: name.into(), tensor: borrow_ptr(tensor) }).collect()
}

/// Hands every tensor over to the other side, with its name.
pub fn tensors_into_owned(tensors: Tensors) -> RVec<OwnedTensor> {
    tensors.into_entries().map(|(name, tensor)| OwnedTensor { name: name.into(), tensor: into_ptr(tensor) }).collect()
}

/// Takes over tensors handed over with [`tensors_into_owned`].
///
/// # Safety
/// Each pointer must come from `into_ptr` and be taken exactly once.
pub unsafe fn tensors_from_owned(owned: RVec<OwnedTensor>) -> Tensors {
    owned.into_iter().map(|t| (t.name.into_string(), take_ptr(t.tensor))).collect()
}

/// Handles to tensors borrowed from the other side.
///
/// # Safety
/// Every pointer in `slice` must point to a live tensor during this call.
pub unsafe fn tensors_from_borrowed(slice: RSlice<'_, NamedTensor<'_>>) -> Tensors {
    slice.iter().map(|nt| (nt.name.as_str().to_owned(), handle_to(nt.tensor))).collect()
}

/// The numbers slice for [`StateFfi`], in [`StateIndex`] order.
pub fn state_numbers(state: &TrainerState) -> [f64; StateIndex::COUNT] {
    let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let mut n = [0.0; StateIndex::COUNT];
    n[StateIndex::EPOCH] = state.epoch;
    n[StateIndex::GLOBAL_STEP] = state.global_step as f64;
    n[StateIndex::MAX_STEPS] = state.max_steps as f64;
    n[StateIndex::NUM_TRAIN_EPOCHS] = state.num_train_epochs;
    n[StateIndex::LOGGING_STEPS] = state.logging_steps as f64;
    n[StateIndex::EVAL_STEPS] = state.eval_steps as f64;
    n[StateIndex::SAVE_STEPS] = state.save_steps as f64;
    n[StateIndex::TRAIN_BATCH_SIZE] = state.train_batch_size as f64;
    n[StateIndex::BEST_METRIC] = opt(state.best_metric);
    n[StateIndex::BEST_GLOBAL_STEP] = opt(state.best_global_step.map(|s| s as f64));
    n[StateIndex::IS_LOCAL_PROCESS_ZERO] = flag(state.is_local_process_zero);
    n[StateIndex::IS_WORLD_PROCESS_ZERO] = flag(state.is_world_process_zero);
    n[StateIndex::TOTAL_FLOS] = state.total_flos;
    n[StateIndex::NUM_INPUT_TOKENS_SEEN] = state.num_input_tokens_seen as f64;
    n[StateIndex::IS_HYPER_PARAM_SEARCH] = flag(state.is_hyper_param_search);
    n
}

/// Reads the state fields this version knows; ones the host did not send keep their
/// defaults.
pub fn state_from_ffi(state: &StateFfi<'_>) -> TrainerState {
    let n = state.numbers.as_slice();
    let num = |i: usize| n.get(i).copied().filter(|v| !v.is_nan());
    let int = |i: usize| num(i).map(|v| v as i64);
    let flag = |i: usize| num(i).map(|v| v != 0.0).unwrap_or(false);
    let checkpoint = state.best_model_checkpoint.as_str();
    TrainerState {
        epoch: num(StateIndex::EPOCH).unwrap_or(0.0),
        global_step: int(StateIndex::GLOBAL_STEP).unwrap_or(0),
        max_steps: int(StateIndex::MAX_STEPS).unwrap_or(0),
        num_train_epochs: num(StateIndex::NUM_TRAIN_EPOCHS).unwrap_or(0.0),
        logging_steps: int(StateIndex::LOGGING_STEPS).unwrap_or(0),
        eval_steps: int(StateIndex::EVAL_STEPS).unwrap_or(0),
        save_steps: int(StateIndex::SAVE_STEPS).unwrap_or(0),
        train_batch_size: int(StateIndex::TRAIN_BATCH_SIZE).unwrap_or(0),
        best_metric: num(StateIndex::BEST_METRIC),
        best_global_step: int(StateIndex::BEST_GLOBAL_STEP),
        best_model_checkpoint: (!checkpoint.is_empty()).then(|| checkpoint.to_owned()),
        is_local_process_zero: flag(StateIndex::IS_LOCAL_PROCESS_ZERO),
        is_world_process_zero: flag(StateIndex::IS_WORLD_PROCESS_ZERO),
        total_flos: num(StateIndex::TOTAL_FLOS).unwrap_or(0.0),
        num_input_tokens_seen: int(StateIndex::NUM_INPUT_TOKENS_SEEN).unwrap_or(0),
        is_hyper_param_search: flag(StateIndex::IS_HYPER_PARAM_SEARCH),
    }
}

/// The control flags in `bits`.
pub fn control_from_bits(bits: ControlBits) -> TrainerControl {
    TrainerControl {
        should_training_stop: bits.get(ControlBits::SHOULD_TRAINING_STOP),
        should_epoch_stop: bits.get(ControlBits::SHOULD_EPOCH_STOP),
        should_save: bits.get(ControlBits::SHOULD_SAVE),
        should_evaluate: bits.get(ControlBits::SHOULD_EVALUATE),
        should_log: bits.get(ControlBits::SHOULD_LOG),
    }
}

/// Writes the flags into `bits`, keeping bits this version does not know.
pub fn write_control_bits(control: &TrainerControl, bits: &mut ControlBits) {
    bits.set(ControlBits::SHOULD_TRAINING_STOP, control.should_training_stop);
    bits.set(ControlBits::SHOULD_EPOCH_STOP, control.should_epoch_stop);
    bits.set(ControlBits::SHOULD_SAVE, control.should_save);
    bits.set(ControlBits::SHOULD_EVALUATE, control.should_evaluate);
    bits.set(ControlBits::SHOULD_LOG, control.should_log);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_from_a_shorter_or_longer_slice() {
        let state = TrainerState { global_step: 7, epoch: 1.5, best_metric: Some(0.25), ..Default::default() };
        let numbers = state_numbers(&state);
        // An older host sends fewer fields: the ones it sends are read, the rest default.
        let short = StateFfi { numbers: numbers[..3].into(), best_model_checkpoint: "".into() };
        let read = state_from_ffi(&short);
        assert_eq!((read.global_step, read.epoch, read.best_metric), (7, 1.5, None));
        // A newer host sends more: the unknown tail is ignored.
        let mut long = numbers.to_vec();
        long.extend([1.0, 2.0]);
        let ffi = StateFfi { numbers: long.as_slice().into(), best_model_checkpoint: "ckpt".into() };
        let read = state_from_ffi(&ffi);
        assert_eq!(read, TrainerState { best_model_checkpoint: Some("ckpt".into()), ..state });
    }

    #[test]
    fn control_bits_keep_unknown_flags() {
        let mut bits = ControlBits(1 << 20 | ControlBits::SHOULD_LOG);
        let mut control = control_from_bits(bits);
        assert!(control.should_log);
        control.should_log = false;
        control.should_save = true;
        write_control_bits(&control, &mut bits);
        assert_eq!(bits.0, 1 << 20 | ControlBits::SHOULD_SAVE);
    }

    #[test]
    fn tensors_cross_and_come_back() {
        let mut tensors = Tensors::new();
        tensors.insert("a", Tensor::from_slice(&[1.0f32, 2.0]));
        let views = tensor_views(&tensors);
        // SAFETY: `tensors` lives through the call.
        let borrowed = unsafe { tensors_from_borrowed(RSlice::from_slice(&views)) };
        assert!(borrowed.get("a").unwrap().equal(tensors.get("a").unwrap()));
        // SAFETY: the pointers come from tensors_into_owned and are taken once.
        let back = unsafe { tensors_from_owned(tensors_into_owned(borrowed)) };
        assert_eq!(back.names().collect::<Vec<_>>(), ["a"]);
    }
}
