//! Counting what a stretch of work asks of libtorch (native/op_count.cpp): the ATen
//! operators dispatched, by name, and the bytes allocated; what torch.profiler reports
//! for the same work in Python, so that the benchmarks can put the two side by side.

use std::collections::BTreeMap;
use std::ffi::c_char;

use super::{check, take_string};

extern "C" {
    fn host_op_count_start() -> *mut c_char;
    fn host_op_count_stop(out: *mut *mut c_char) -> *mut c_char;
}

/// What was dispatched while an [`OpCounter`] was on.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OpCount {
    /// Calls per operator name (`aten::mm`, ...), nested calls included, as the profiler
    /// lists them.
    pub ops: BTreeMap<String, u64>,
    /// Bytes handed out by the allocators, and how many allocations.
    pub bytes_allocated: u64,
    pub allocations: u64,
}

impl OpCount {
    /// All ATen operator calls.
    pub fn aten_ops(&self) -> u64 {
        self.ops.iter().filter(|(name, _)| name.starts_with("aten::")).map(|(_, n)| n).sum()
    }

    /// The shim's text: "bytes<TAB>allocations", then a "name<TAB>count" line per operator.
    fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        let numbers = |line: Option<&str>| {
            let (a, b) = line.and_then(|l| l.split_once('\t')).unwrap_or(("0", "0"));
            (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
        };
        let (bytes_allocated, allocations) = numbers(lines.next());
        let ops = lines
            .filter_map(|line| line.rsplit_once('\t'))
            .map(|(name, count)| (name.to_owned(), count.parse().unwrap_or(0)))
            .collect();
        Self { ops, bytes_allocated, allocations }
    }
}

/// Counts operators and allocations on this thread and in the work it hands to autograd,
/// from `start` until `stop`. One at a time per thread.
#[derive(Debug)]
pub struct OpCounter {
    stopped: bool,
}

impl OpCounter {
    pub fn start() -> Result<Self, String> {
        // SAFETY: installs a callback and a thread-local reporter; `stop` removes both.
        check(unsafe { host_op_count_start() })?;
        Ok(Self { stopped: false })
    }

    pub fn stop(mut self) -> Result<OpCount, String> {
        self.stopped = true;
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: on success the shim writes a string it allocated into `out`.
        check(unsafe { host_op_count_stop(&mut out) })?;
        // SAFETY: set by the shim on success, taken once.
        Ok(OpCount::parse(&unsafe { take_string(out) }))
    }
}

impl Drop for OpCounter {
    fn drop(&mut self) {
        if !self.stopped {
            let mut out: *mut c_char = std::ptr::null_mut();
            // SAFETY: as in `stop`; the counts are dropped.
            if check(unsafe { host_op_count_stop(&mut out) }).is_ok() {
                // SAFETY: set by the shim on success, taken once.
                let _ = unsafe { take_string(out) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn counts_the_operators_and_bytes_of_the_work_between_start_and_stop() {
        let x = Tensor::ones([64, 64], (Kind::Float, Device::Cpu));
        let counter = OpCounter::start().unwrap();
        let y = x.mm(&x);
        let _z = y.relu();
        let count = counter.stop().unwrap();
        assert_eq!(count.ops.get("aten::mm"), Some(&1), "{:?}", count.ops);
        assert_eq!(count.ops.get("aten::relu"), Some(&1), "{:?}", count.ops);
        // Two new 64 x 64 float32 tensors at least.
        assert!(count.bytes_allocated >= 2 * 64 * 64 * 4, "{count:?}");
        // Nothing is counted once stopped.
        let _w = x.mm(&x);
        let again = OpCounter::start().unwrap().stop().unwrap();
        assert_eq!(again.aten_ops(), 0, "{again:?}");
    }
}
