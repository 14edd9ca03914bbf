//! The torchrun environment contract: which rank this process is, of how many, and where
//! the rendezvous store is. `host launch` sets the same variables.

use crate::error::InputError;

/// torchrun's default MASTER_PORT.
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in a distributed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already hosts the store (TORCHELASTIC_USE_AGENT_STORE=True): every
    /// rank connects as a client, rank 0 included.
    pub agent_store: bool,
}

impl WorldEnv {
    /// The run's place from the environment; `None` when WORLD_SIZE and RANK are unset (a
    /// plain single-process run).
    pub fn from_env() -> Result<Option<Self>, InputError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`from_env`], reading variables through `get` (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, InputError> {
        if get("WORLD_SIZE").is_none() && get("RANK").is_none() {
            return Ok(None);
        }
        let number = |name: &str, default: Option<usize>| -> Result<usize, InputError> {
            match get(name) {
                Some(text) => text.trim().parse().map_err(|_| {
                    InputError::new(format!("environment variable {name}={text:?} is not a whole number"))
                }),
                None => default.ok_or_else(|| {
                    InputError::new(format!(
                        "environment variable {name} is not set: a distributed run needs RANK and WORLD_SIZE (torchrun and `host launch` set them)"
                    ))
                }),
            }
        };
        let world_size = number("WORLD_SIZE", None)?;
        let rank = number("RANK", None)?;
        if world_size == 0 || rank >= world_size {
            return Err(InputError::new(format!(
                "RANK={rank} does not fit WORLD_SIZE={world_size}: ranks are numbered 0 to WORLD_SIZE-1"
            )));
        }
        let local_rank = number("LOCAL_RANK", Some(rank))?;
        let local_world_size = number("LOCAL_WORLD_SIZE", Some(world_size))?;
        let master_port = match get("MASTER_PORT") {
            None => DEFAULT_PORT,
            Some(text) => text.trim().parse().map_err(|_| {
                InputError::new(format!("environment variable MASTER_PORT={text:?} is not a port number (1-65535)"))
            })?,
        };
        let agent_store =
            get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ok(Some(Self {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".to_owned()),
            master_port,
            agent_store,
        }))
    }

    /// Whether this process hosts the rendezvous store.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.agent_store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Option<WorldEnv>, InputError> {
        WorldEnv::from_lookup(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn reads_the_torchrun_variables() {
        let env = parse(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank, env.local_world_size), (3, 4, 1, 2));
        assert_eq!((env.master_addr.as_str(), env.master_port, env.agent_store), ("10.0.0.1", 1234, true));
        assert!(!env.hosts_store());
        assert_eq!(parse(&[]).unwrap(), None);
        let single = parse(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap().unwrap();
        assert!(single.hosts_store() && single.master_port == DEFAULT_PORT);
    }

    #[test]
    fn bad_variables_are_named() {
        let error = parse(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(error.contains("RANK=2 does not fit WORLD_SIZE=2"), "{error}");
        let error = parse(&[("RANK", "0")]).unwrap_err().to_string();
        assert!(error.contains("WORLD_SIZE is not set"), "{error}");
        let error = parse(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "http")]).unwrap_err().to_string();
        assert!(error.contains("MASTER_PORT=\"http\""), "{error}");
    }
}
