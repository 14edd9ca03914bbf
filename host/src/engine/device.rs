//! Choosing the device the run trains on.

use tch::Device;

use crate::error::InputError;

/// `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Option<Device>, InputError> {
    match spec {
        "auto" => Ok(None),
        "cpu" => Ok(Some(Device::Cpu)),
        "cuda" => Ok(Some(Device::Cuda(0))),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Ok(Some(Device::Cuda(index))),
            _ => Err(InputError::new(format!("device '{other}' is not one of: auto, cpu, cuda, cuda:N"))),
        },
    }
}

/// The device to train on; asking for CUDA where there is none is an input error.
pub fn select_device(spec: &str) -> Result<Device, InputError> {
    match parse_device(spec)? {
        None => Ok(Device::cuda_if_available()),
        Some(Device::Cuda(index)) => {
            let count = tch::Cuda::device_count() as usize;
            if index < count {
                Ok(Device::Cuda(index))
            } else if count == 0 {
                Err(InputError::new(format!("device '{spec}' asked for, but CUDA is not available; use --device cpu")))
            } else {
                Err(InputError::new(format!("device '{spec}' asked for, but only {count} CUDA device(s) exist")))
            }
        }
        Some(device) => Ok(device),
    }
}

/// The device of one rank of a distributed run: `auto` and `cuda` mean the GPU of its
/// LOCAL_RANK when there is CUDA (one GPU per rank, as torchrun runs go).
pub fn rank_device(spec: &str, local_rank: usize) -> Result<Device, InputError> {
    let cuda_by_default = matches!(spec, "auto" | "cuda");
    match select_device(spec)? {
        Device::Cuda(_) if cuda_by_default => {
            let count = tch::Cuda::device_count() as usize;
            if local_rank < count {
                Ok(Device::Cuda(local_rank))
            } else {
                Err(InputError::new(format!(
                    "LOCAL_RANK {local_rank} has no GPU: this machine has {count}; start at most {count} ranks per node, or use --device cpu"
                )))
            }
        }
        device => Ok(device),
    }
}

/// A short human name for logs: `cpu`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
