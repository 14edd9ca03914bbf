//! Moving `tch::Tensor`s across the boundary. This module holds the only `unsafe` code
//! that plugins run; plugin authors only ever see `tch::Tensor`.
//!
//! A tch `Tensor` wraps a heap-allocated `torch::Tensor*`. Host and plugins link the same
//! libtorch, so a pointer from one side is a valid tensor on the other: autograd graphs,
//! devices and storage are shared, nothing is copied.

use abi_stable::std_types::RSlice;
use tch::Tensor;

use crate::ffi::{NamedTensor, TensorPtr};
use crate::PluginError;

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

/// Named tensors: the model outputs (`logits`, ...) or a batch (`input`, `labels`, ...).
pub struct Tensors {
    entries: Vec<(String, Tensor)>,
}

impl Tensors {
    pub fn new() -> Self {
        Self { entries: Vec::new() }
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        self.entries.retain(|(n, _)| *n != name);
        self.entries.push((name, tensor));
    }

    /// The tensor called `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The tensor called `name`, or an error that lists the names there are.
    pub fn require(&self, name: &str) -> Result<&Tensor, PluginError> {
        self.get(name).ok_or_else(|| {
            PluginError::new(format!(
                "no tensor named '{name}' (there are: {})",
                self.names().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Borrowed views for a call across the boundary; valid while `self` lives.
    pub fn as_ffi(&self) -> Vec<NamedTensor<'_>> {
        self.entries
            .iter()
            .map(|(name, tensor)| NamedTensor { name: name.as_str().into(), tensor: borrow_ptr(tensor) })
            .collect()
    }

    /// Hands every tensor over to the other side, with its name.
    pub fn into_owned_ffi(self) -> abi_stable::std_types::RVec<crate::ffi::OwnedTensor> {
        self.entries
            .into_iter()
            .map(|(name, tensor)| crate::ffi::OwnedTensor { name: name.into(), tensor: into_ptr(tensor) })
            .collect()
    }

    /// Takes over tensors handed over with [`Tensors::into_owned_ffi`].
    ///
    /// # Safety
    /// Each pointer must come from `into_ptr` and be taken exactly once.
    pub unsafe fn from_owned_ffi(owned: abi_stable::std_types::RVec<crate::ffi::OwnedTensor>) -> Self {
        let entries = owned.into_iter().map(|t| (t.name.into_string(), take_ptr(t.tensor))).collect();
        Self { entries }
    }

    /// Handles to tensors borrowed from the other side.
    ///
    /// # Safety
    /// Every pointer in `slice` must point to a live tensor during this call.
    pub unsafe fn from_ffi(slice: RSlice<'_, NamedTensor<'_>>) -> Self {
        let entries = slice.iter().map(|nt| (nt.name.as_str().to_owned(), handle_to(nt.tensor))).collect();
        Self { entries }
    }
}

impl Default for Tensors {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Tensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(n, t)| (n, t.size()))).finish()
    }
}
