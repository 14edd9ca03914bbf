//! Choosing the device the run trains on.

use tch::Device;

use crate::error::InputError;

/// The device the arguments ask for: `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA when there is, else the CPU.
    Auto,
    Cpu,
    /// `cuda` (no index: the first GPU, or a distributed rank's own) or `cuda:N`.
    Cuda(Option<usize>),
}

impl DeviceSpec {
    pub fn parse(spec: &str) -> Result<Self, InputError> {
        match spec {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(index)) => Ok(Self::Cuda(Some(index))),
                _ => Err(InputError::new(format!("device '{other}' is not one of: auto, cpu, cuda, cuda:N"))),
            },
        }
    }

    /// The device to train on; asking for CUDA where there is none is an input error.
    pub fn select(self) -> Result<Device, InputError> {
        match self {
            Self::Auto => Ok(Device::cuda_if_available()),
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(index) => {
                let shown = index.map_or("cuda".to_owned(), |i| format!("cuda:{i}"));
                let index = index.unwrap_or(0);
                let count = tch::Cuda::device_count() as usize;
                if index < count {
                    Ok(Device::Cuda(index))
                } else if count == 0 {
                    Err(InputError::new(format!(
                        "device '{shown}' asked for, but CUDA is not available; use --device cpu"
                    )))
                } else {
                    Err(InputError::new(format!("device '{shown}' asked for, but only {count} CUDA device(s) exist")))
                }
            }
        }
    }

    /// The device of one rank of a distributed run: `auto` and `cuda` mean the GPU of its
    /// LOCAL_RANK when there is CUDA (one GPU per rank, as torchrun runs go).
    pub fn for_rank(self, local_rank: usize) -> Result<Device, InputError> {
        let cuda_by_default = matches!(self, Self::Auto | Self::Cuda(None));
        match self.select()? {
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
}

/// A short human name for logs and checkpoint keys: `cpu`, `cuda:0`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The device a [`device_name`] names, if any.
pub fn device_named(name: &str) -> Option<Device> {
    match DeviceSpec::parse(name).ok()? {
        DeviceSpec::Cpu => Some(Device::Cpu),
        DeviceSpec::Cuda(Some(index)) => Some(Device::Cuda(index)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_name_back() {
        let cases = [
            ("auto", Ok(DeviceSpec::Auto)),
            ("cpu", Ok(DeviceSpec::Cpu)),
            ("cuda", Ok(DeviceSpec::Cuda(None))),
            ("cuda:3", Ok(DeviceSpec::Cuda(Some(3)))),
            ("gpu", Err("device 'gpu' is not one of: auto, cpu, cuda, cuda:N".to_owned())),
            ("cuda:x", Err("device 'cuda:x' is not one of: auto, cpu, cuda, cuda:N".to_owned())),
        ];
        for (text, expected) in cases {
            assert_eq!(DeviceSpec::parse(text).map_err(|e| e.to_string()), expected, "{text}");
        }
        assert_eq!(device_named(&device_name(Device::Cuda(2))), Some(Device::Cuda(2)));
        assert_eq!(device_named("cpu"), Some(Device::Cpu));
        assert_eq!(device_named("auto"), None);
    }
}
