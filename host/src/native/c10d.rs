//! PyTorch's c10d store and process group (native/distributed.cpp), compiled where gloo's
//! headers were found (cfg `host_distributed`). Errors come back as libtorch's message,
//! first line only.

#[cfg(host_distributed)]
use std::ffi::c_char;
use std::ffi::{c_void, CString};
use std::time::Duration;

use tch::Tensor;

#[cfg(host_distributed)]
use super::{check, handles};

#[cfg(host_distributed)]
extern "C" {
    fn host_dist_store(
        addr: *const c_char,
        port: i32,
        is_server: i32,
        world: i32,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn host_dist_store_set(group: *mut c_void, key: *const c_char, value: *const u8, len: usize) -> *mut c_char;
    fn host_dist_store_get(
        group: *mut c_void,
        key: *const c_char,
        timeout_ms: i64,
        found: *mut i32,
        out: *mut *mut u8,
        len: *mut usize,
    ) -> *mut c_char;
    fn host_dist_process_group(
        group: *mut c_void,
        backend: *const c_char,
        rank: i32,
        world: i32,
        timeout_ms: i64,
    ) -> *mut c_char;
    fn host_dist_all_reduce_sum(group: *mut c_void, tensors: *mut *mut c_void, n: usize) -> *mut c_char;
    fn host_dist_all_reduce_max(group: *mut c_void, tensors: *mut *mut c_void, n: usize) -> *mut c_char;
    fn host_dist_broadcast(group: *mut c_void, tensors: *mut *mut c_void, n: usize, root: i32) -> *mut c_char;
    fn host_dist_reducer(
        group: *mut c_void,
        params: *mut *mut c_void,
        n_params: usize,
        flats: *mut *mut c_void,
        sizes: *const usize,
        n_buckets: usize,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn host_dist_reducer_arm(reducer: *mut c_void);
    fn host_dist_reducer_finish(reducer: *mut c_void) -> *mut c_char;
}

/// Whether this host was built with the c10d shim (gloo's headers were found).
pub const DISTRIBUTED_BUILT: bool = cfg!(host_distributed);

/// Whether the NCCL part of the shim was built (a CUDA torch with NCCL's headers).
pub const NCCL_BUILT: bool = option_env!("HOST_WITH_NCCL").is_some();

/// What to do about a host built without it.
pub const WITHOUT_DISTRIBUTED: &str = "this host was built without distributed training (gloo's headers were missing): install libgloo-dev (scripts/setup.sh does) and rebuild";

/// A connection to the rendezvous store, and once made, the process group over it. Never
/// freed: it lives as long as the run (as torch's default group does).
pub struct Group {
    #[cfg_attr(not(host_distributed), allow(dead_code))]
    handle: *mut c_void,
}

// SAFETY: c10d's store and process groups are thread-safe objects; the handle is only a
// pointer to them.
unsafe impl Send for Group {}

/// Gradient buckets that all-reduce themselves during backward (native/distributed.cpp),
/// living as long as the run.
pub struct Reducer {
    #[cfg_attr(not(host_distributed), allow(dead_code))]
    handle: *mut c_void,
}

// SAFETY: the C++ reducer guards its state with a mutex.
unsafe impl Send for Reducer {}

fn ms(timeout: Duration) -> i64 {
    timeout.as_millis().min(i64::MAX as u128) as i64
}

fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "")).expect("no NUL left")
}

#[cfg(host_distributed)]
impl Group {
    /// Connects to the store at addr:port, hosting it when `is_server`.
    pub fn connect(addr: &str, port: u16, is_server: bool, world: usize, timeout: Duration) -> Result<Self, String> {
        let mut handle = std::ptr::null_mut();
        let addr = c_string(addr);
        // SAFETY: the strings outlive the call; the shim writes the handle on success.
        check(unsafe {
            host_dist_store(addr.as_ptr(), port as i32, is_server as i32, world as i32, ms(timeout), &mut handle)
        })?;
        Ok(Self { handle })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let key = c_string(key);
        // SAFETY: the pointers are live for the call; the shim copies the value.
        check(unsafe { host_dist_store_set(self.handle, key.as_ptr(), value.as_ptr(), value.len()) })
    }

    /// The value of `key`, waiting up to `timeout` for it to be set; `None` if it was not.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        let key = c_string(key);
        let (mut found, mut out, mut len) = (0i32, std::ptr::null_mut::<u8>(), 0usize);
        // SAFETY: the shim writes the out-parameters; `out` is malloc'ed when found.
        check(unsafe { host_dist_store_get(self.handle, key.as_ptr(), ms(timeout), &mut found, &mut out, &mut len) })?;
        if found == 0 {
            return Ok(None);
        }
        // SAFETY: `out` holds `len` bytes the shim allocated with malloc.
        let value = unsafe { std::slice::from_raw_parts(out, len) }.to_vec();
        unsafe { libc::free(out as *mut c_void) };
        Ok(Some(value))
    }

    /// Creates the process group ("gloo" or "nccl") over the store.
    pub fn start_backend(&self, backend: &str, rank: usize, world: usize, timeout: Duration) -> Result<(), String> {
        let backend = c_string(backend);
        // SAFETY: the string is live for the call.
        check(unsafe { host_dist_process_group(self.handle, backend.as_ptr(), rank as i32, world as i32, ms(timeout)) })
    }

    /// Sums each tensor across ranks, in place.
    pub fn all_reduce_sum(&self, tensors: &[&Tensor]) -> Result<(), String> {
        let mut handles = handles(tensors);
        // SAFETY: the tensors are live for the call and updated in place.
        check(unsafe { host_dist_all_reduce_sum(self.handle, handles.as_mut_ptr(), handles.len()) })
    }

    /// The largest value of each element across ranks, in place.
    pub fn all_reduce_max(&self, tensors: &[&Tensor]) -> Result<(), String> {
        let mut handles = handles(tensors);
        // SAFETY: as all_reduce_sum.
        check(unsafe { host_dist_all_reduce_max(self.handle, handles.as_mut_ptr(), handles.len()) })
    }

    /// Copies rank `root`'s tensors to every rank, in place.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<(), String> {
        let mut handles = handles(tensors);
        // SAFETY: as all_reduce_sum.
        check(unsafe { host_dist_broadcast(self.handle, handles.as_mut_ptr(), handles.len(), root as i32) })
    }

    /// Hooks `params` (in bucket order, `sizes[b]` of them in bucket `b`, whose gradients
    /// are slices of `flats[b]`) so that each bucket all-reduces once its gradients are in.
    pub fn reducer(&self, params: &[&Tensor], flats: &[&Tensor], sizes: &[usize]) -> Result<Reducer, String> {
        let (mut p, mut f) = (handles(params), handles(flats));
        let mut handle = std::ptr::null_mut();
        // SAFETY: the tensors are live for the call; the reducer keeps its own references.
        check(unsafe {
            host_dist_reducer(
                self.handle,
                p.as_mut_ptr(),
                p.len(),
                f.as_mut_ptr(),
                sizes.as_ptr(),
                sizes.len(),
                &mut handle,
            )
        })?;
        Ok(Reducer { handle })
    }
}

#[cfg(host_distributed)]
impl Reducer {
    /// The next backward pass all-reduces its buckets.
    pub fn arm(&self) {
        // SAFETY: the handle is a live reducer.
        unsafe { host_dist_reducer_arm(self.handle) }
    }

    /// After that backward pass: waits for every bucket's all-reduce.
    pub fn finish(&self) -> Result<(), String> {
        // SAFETY: the handle is a live reducer.
        check(unsafe { host_dist_reducer_finish(self.handle) })
    }
}

#[cfg(not(host_distributed))]
impl Reducer {
    pub fn arm(&self) {}
    pub fn finish(&self) -> Result<(), String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
}

/// A host built without gloo's headers: every call says how to get distributed training.
#[cfg(not(host_distributed))]
impl Group {
    pub fn connect(_: &str, _: u16, _: bool, _: usize, _: Duration) -> Result<Self, String> {
        let _ = (c_string, ms);
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
    pub fn set(&self, _: &str, _: &[u8]) -> Result<(), String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
    pub fn get(&self, _: &str, _: Duration) -> Result<Option<Vec<u8>>, String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
    pub fn start_backend(&self, _: &str, _: usize, _: usize, _: Duration) -> Result<(), String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
    pub fn all_reduce_sum(&self, _: &[&Tensor]) -> Result<(), String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
    pub fn all_reduce_max(&self, _: &[&Tensor]) -> Result<(), String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
    pub fn broadcast(&self, _: &[&Tensor], _: usize) -> Result<(), String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
    pub fn reducer(&self, _: &[&Tensor], _: &[&Tensor], _: &[usize]) -> Result<Reducer, String> {
        Err(WITHOUT_DISTRIBUTED.to_owned())
    }
}
