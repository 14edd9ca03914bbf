//! libtorch failures as errors. tch's ordinary calls panic when libtorch throws (out of
//! memory, shapes that do not fit); the host runs its libtorch work inside `guard`, which
//! turns such a failure into one error line that names what was being done, so that an
//! out-of-memory reads as the machine's limit, not as a host bug. Panics that are not
//! libtorch's (bugs) go on as panics.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

use crate::error::first_line;

thread_local! {
    /// How many guards this thread is inside.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// A failure libtorch reported through a fallible call (the C++ shims' messages).
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

/// Runs `work`; a libtorch failure in it (a tch panic, a `tch::TchError` or a [`Failed`]
/// it returns) becomes an error about `what` ("the model (hidden_size 1000000)").
pub fn guard<T>(what: impl FnOnce() -> String, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    DEPTH.with(|d| d.set(d.get() + 1));
    let outcome = panic::catch_unwind(AssertUnwindSafe(work));
    DEPTH.with(|d| d.set(d.get() - 1));
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => match reported(&error) {
            Some(message) => Err(failure(&what(), &message)),
            None => Err(error),
        },
        Err(payload) => match panic_message(payload.as_ref()).as_deref().and_then(torch_message) {
            Some(message) => Err(failure(&what(), &message)),
            None => panic::resume_unwind(payload),
        },
    }
}

/// Whether this thread runs inside a guard: the process's panic hook stays quiet for the
/// libtorch panics a guard turns into errors.
pub fn inside_guard() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Whether a panic message is a libtorch failure (which a guard reports itself).
pub fn is_torch_panic(message: &str) -> bool {
    torch_message(message).is_some()
}

/// An allocation that failed in libtorch (its message says what and for what); the one
/// libtorch failure a caller may answer (auto_find_batch_size retries with less).
#[derive(Debug)]
pub struct OutOfMemory(pub String);

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutOfMemory {}

/// The error for a libtorch failure during `what`.
pub fn failure(what: &str, message: &str) -> anyhow::Error {
    match allocation(message) {
        Some(bytes) => OutOfMemory(format!(
            "out of memory allocating {} for {what}: use a smaller model or batch",
            bytes.map_or("memory".to_owned(), human_bytes)
        ))
        .into(),
        None => anyhow::anyhow!("{what} failed in libtorch: {}", first_line(message)),
    }
}

/// The libtorch message of an error a guarded call returned, if it is one.
fn reported(error: &anyhow::Error) -> Option<String> {
    if let Some(tch::TchError::Torch(message)) = error.downcast_ref::<tch::TchError>() {
        return Some(message.clone());
    }
    error.downcast_ref::<Failed>().map(|failed| failed.0.clone())
}

/// A panic's message, as text (for a panic that must travel as an error).
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    panic_message(payload).unwrap_or_else(|| "a panic without a message".to_owned())
}

fn panic_message(payload: &(dyn Any + Send)) -> Option<String> {
    payload.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| payload.downcast_ref::<String>().cloned())
}

/// libtorch's message inside a tch panic (`called Result::unwrap() on an Err value:
/// Torch("...")`), unescaped.
fn torch_message(panic: &str) -> Option<String> {
    let start = panic.find("Torch(\"")? + "Torch(\"".len();
    let quoted = &panic[start..];
    let end = quoted.rfind("\")").unwrap_or(quoted.len());
    Some(quoted[..end].replace("\\n", "\n").replace("\\\"", "\""))
}

/// Whether a message reports an allocation that failed, and if it says, of how many bytes
/// (CPU: "you tried to allocate 4000000000000 bytes"; CUDA: "Tried to allocate 3.81 GiB").
fn allocation(message: &str) -> Option<Option<u64>> {
    let lower = message.to_lowercase();
    let markers =
        ["out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory", "bad_alloc"];
    if !markers.iter().any(|marker| lower.contains(marker)) {
        return None;
    }
    let Some(at) = lower.find("tried to allocate ") else { return Some(None) };
    let mut words = lower[at + "tried to allocate ".len()..].split_whitespace();
    let number: f64 = words.next().and_then(|n| n.trim_end_matches(['.', ',']).parse().ok())?;
    let unit = words.next().unwrap_or("bytes").trim_end_matches(['.', ',', ')']);
    let scale = match unit {
        "bytes" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0_f64.powi(4),
        _ => return Some(None),
    };
    Some(Some((number * scale) as u64))
}

/// "3.8 GB", "512.0 MB": decimal units, one decimal.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["bytes", "KB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_names_the_size_and_what_was_being_done() {
        let cpu = "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: you tried to allocate 3800000000 bytes.";
        assert_eq!(
            failure("the model (hidden_size 1000000)", cpu).to_string(),
            "out of memory allocating 3.8 GB for the model (hidden_size 1000000): use a smaller model or batch"
        );
        let cuda = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB";
        assert!(failure("training step 3", cuda)
            .to_string()
            .starts_with("out of memory allocating 2.1 GB for training step 3"));
        assert_eq!(
            failure("evaluation", "mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)\nException raised from")
                .to_string(),
            "evaluation failed in libtorch: mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"
        );
    }

    #[test]
    fn a_tch_panic_becomes_an_error_and_a_bug_stays_a_panic() {
        let a = tch::Tensor::zeros([4, 3], tch::kind::FLOAT_CPU);
        let b = tch::Tensor::zeros([5, 6], tch::kind::FLOAT_CPU);
        // Quiet the default hook for the expected panics of this test.
        let hook = panic::take_hook();
        panic::set_hook(Box::new(|_| {}));
        let error = guard(|| "the forward pass".to_owned(), || Ok(a.matmul(&b))).unwrap_err().to_string();
        let bug = panic::catch_unwind(|| guard(|| "work".to_owned(), || -> anyhow::Result<()> { panic!("a bug") }));
        panic::set_hook(hook);
        assert!(
            error.starts_with("the forward pass failed in libtorch: mat1 and mat2 shapes cannot be multiplied"),
            "{error}"
        );
        assert!(!error.contains('\n'));
        assert!(bug.is_err(), "a panic that is not libtorch's must go on");
        assert!(!inside_guard());
        // Errors returned by fallible calls are worded the same way.
        let returned = guard(|| "the backward pass".to_owned(), || Ok(a.f_matmul(&b)?)).unwrap_err().to_string();
        assert!(returned.starts_with("the backward pass failed in libtorch: mat1 and mat2"), "{returned}");
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3_800_000_000), "3.8 GB");
        assert_eq!(allocation("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0)"), Some(Some(20 * 1024 * 1024)));
        assert_eq!(allocation("std::bad_alloc"), Some(None));
        let cpu =
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4000000000000 bytes. Error code 12";
        assert_eq!(allocation(cpu), Some(Some(4_000_000_000_000)));
        assert_eq!(allocation("shapes do not fit"), None);
    }
}
