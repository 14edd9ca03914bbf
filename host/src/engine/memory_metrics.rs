//! HF's memory metrics (`skip_memory_metrics = false`, TrainerMemoryTracker): for each
//! stage (init, train, eval, test) the change of the process's resident memory and of the
//! accelerator memory the caching allocator has handed out, and how far above the end
//! value each went at its peak: `{stage}_mem_cpu_alloc_delta`, `{stage}_mem_cpu_peaked_delta`,
//! `{stage}_mem_gpu_alloc_delta`, `{stage}_mem_gpu_peaked_delta`, in bytes; the init
//! stage's figures and `before_init_mem_cpu`/`_gpu` go with the first stage reported.
//!
//! The CPU peak is the kernel's own high-water mark (VmHWM, reset at each stage's start
//! through /proc/self/clear_refs) where HF polls the resident size from a busy thread.
//! Init is the trainer's construction, which here includes loading the model.

use anyhow::Result;
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Init,
    Train,
    Eval,
    Test,
}

impl Stage {
    fn prefix(self) -> &'static str {
        match self {
            Stage::Init => "init",
            Stage::Train => "train",
            Stage::Eval => "eval",
            Stage::Test => "test",
        }
    }
}

/// One stage's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StageMemory {
    cpu_begin: u64,
    cpu_alloc: i64,
    /// None where the kernel's high-water mark could not be reset.
    cpu_peaked: Option<u64>,
    /// (begin, alloc, peaked) on the accelerator.
    gpu: Option<(u64, i64, u64)>,
}

#[derive(Debug)]
struct Running {
    stage: Stage,
    cpu_begin: u64,
    cpu_peak_reset: bool,
    gpu_begin: Option<u64>,
}

#[derive(Debug)]
pub struct MemoryTracker {
    /// The accelerator's index; None on the CPU.
    cuda: Option<usize>,
    running: Option<Running>,
    /// The init stage's figures until the first stage reports them.
    init: Option<StageMemory>,
}

impl MemoryTracker {
    /// A tracker, or None with `skip` (HF's default).
    pub fn new(skip: bool, device: Device) -> Option<Self> {
        let cuda = match device {
            Device::Cuda(index) => Some(index),
            _ => None,
        };
        (!skip).then_some(Self { cuda, running: None, init: None })
    }

    /// Starts `stage`, unless another is running (an evaluation inside training counts
    /// as training, as in HF).
    pub fn start(&mut self, stage: Stage) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        if let Some(index) = self.cuda {
            crate::native::reset_peak_memory(index).map_err(anyhow::Error::msg)?;
            crate::native::empty_cache().map_err(anyhow::Error::msg)?;
        }
        let gpu_begin = self.gpu_now()?.map(|(allocated, _)| allocated);
        let cpu_peak_reset = reset_cpu_peak();
        self.running = Some(Running { stage, cpu_begin: resident_bytes()?, cpu_peak_reset, gpu_begin });
        Ok(())
    }

    /// Ends `stage` (if it is the running one) and adds its metrics to `metrics`, with
    /// init's before the first stage's.
    pub fn stop(&mut self, stage: Stage, metrics: &mut Vec<(String, f64)>) -> Result<()> {
        let Some(running) = self.running.take_if(|r| r.stage == stage) else { return Ok(()) };
        if self.cuda.is_some() {
            crate::native::empty_cache().map_err(anyhow::Error::msg)?;
        }
        let cpu_end = resident_bytes()?;
        let cpu_peak = running.cpu_peak_reset.then(cpu_high_water_mark).flatten();
        let gpu = match (running.gpu_begin, self.gpu_now()?) {
            (Some(begin), Some((end, peak))) => Some((begin, end as i64 - begin as i64, peak.saturating_sub(end))),
            _ => None,
        };
        let memory = StageMemory {
            cpu_begin: running.cpu_begin,
            cpu_alloc: cpu_end as i64 - running.cpu_begin as i64,
            cpu_peaked: cpu_peak.map(|peak| peak.saturating_sub(cpu_end)),
            gpu,
        };
        if stage == Stage::Init {
            self.init = Some(memory);
            return Ok(());
        }
        if let Some(init) = self.init.take() {
            push(metrics, Stage::Init, &init);
            push(metrics, stage, &memory);
            metrics.push(("before_init_mem_cpu".to_owned(), init.cpu_begin as f64));
            if let Some((begin, _, _)) = init.gpu {
                metrics.push(("before_init_mem_gpu".to_owned(), begin as f64));
            }
        } else {
            push(metrics, stage, &memory);
        }
        Ok(())
    }

    fn gpu_now(&self) -> Result<Option<(u64, u64)>> {
        match self.cuda {
            Some(index) => crate::native::device_memory(index).map_err(anyhow::Error::msg),
            None => Ok(None),
        }
    }
}

/// HF's order: alloc then peaked, CPU then GPU.
fn push(metrics: &mut Vec<(String, f64)>, stage: Stage, memory: &StageMemory) {
    let prefix = stage.prefix();
    metrics.push((format!("{prefix}_mem_cpu_alloc_delta"), memory.cpu_alloc as f64));
    if let Some((_, alloc, _)) = memory.gpu {
        metrics.push((format!("{prefix}_mem_gpu_alloc_delta"), alloc as f64));
    }
    if let Some(peaked) = memory.cpu_peaked {
        metrics.push((format!("{prefix}_mem_cpu_peaked_delta"), peaked as f64));
    }
    if let Some((_, _, peaked)) = memory.gpu {
        metrics.push((format!("{prefix}_mem_gpu_peaked_delta"), peaked as f64));
    }
}

/// The process's resident memory (psutil's `memory_info().rss`).
fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    Ok(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Restarts the kernel's peak resident size count (Linux 4.0 and later).
fn reset_cpu_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The peak resident size since the last reset (VmHWM).
fn cpu_high_water_mark() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_reports_the_memory_it_kept_and_the_peak_above_that() {
        let mut tracker = MemoryTracker::new(false, Device::Cpu).unwrap();
        let mut metrics = Vec::new();
        tracker.start(Stage::Init).unwrap();
        tracker.stop(Stage::Init, &mut metrics).unwrap();
        assert!(metrics.is_empty(), "init waits for the first stage");
        tracker.start(Stage::Train).unwrap();
        // Kept: 64 MB touched; freed before the end: 128 MB more at the peak.
        let kept = vec![1u8; 64 << 20];
        let freed = vec![1u8; 128 << 20];
        std::hint::black_box(&freed);
        drop(freed);
        // A nested stage is part of the running one.
        tracker.start(Stage::Eval).unwrap();
        tracker.stop(Stage::Eval, &mut metrics).unwrap();
        assert!(metrics.is_empty());
        tracker.stop(Stage::Train, &mut metrics).unwrap();
        std::hint::black_box(&kept);
        let names: Vec<&str> = metrics.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init_mem_cpu_alloc_delta",
                "init_mem_cpu_peaked_delta",
                "train_mem_cpu_alloc_delta",
                "train_mem_cpu_peaked_delta",
                "before_init_mem_cpu"
            ]
        );
        let value = |name: &str| metrics.iter().find(|(n, _)| n == name).unwrap().1;
        let mb = (1u64 << 20) as f64;
        // Other tests run beside this one and may free memory meanwhile: the peak above
        // the end is ours at least, the kept amount is not asserted.
        assert!(value("train_mem_cpu_peaked_delta") >= 120.0 * mb, "{metrics:?}");
        assert!(value("before_init_mem_cpu") > 0.0);
        // Reported once: the next stage carries its own figures only.
        let mut later = Vec::new();
        tracker.start(Stage::Eval).unwrap();
        tracker.stop(Stage::Eval, &mut later).unwrap();
        assert_eq!(
            later.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["eval_mem_cpu_alloc_delta", "eval_mem_cpu_peaked_delta"]
        );
    }
}
