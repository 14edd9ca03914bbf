//! `host launch`: torchrun's job for users without Python. Starts this node's ranks as
//! copies of this binary with torchrun's environment variables, waits for them, and when
//! one fails stops the rest and exits with its status.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::engine::distributed::env::DEFAULT_PORT;
use crate::error::InputError;

/// How long the other ranks get to notice a failed rank and exit by themselves (they name
/// it in their own error) before they are killed.
const GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Args)]
pub struct LaunchOptions {
    /// Ranks (processes) to start on this node: one per GPU, or a few on CPU.
    #[arg(long, value_name = "N")]
    pub nproc_per_node: usize,
    /// Nodes in the run; start `host launch` on each, with its own --node-rank.
    #[arg(long, value_name = "M", default_value_t = 1)]
    pub nnodes: usize,
    /// This node's number, 0 to nnodes-1; node 0 hosts the rendezvous.
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub node_rank: usize,
    /// Address of node 0, reachable from every node.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port of the rendezvous on node 0. Default: a free port on a single node, else 29500.
    #[arg(long, value_name = "PORT")]
    pub master_port: Option<u16>,
    /// The training arguments, after `--`, as for `host train`.
    #[arg(last = true, value_name = "TRAIN ARGS")]
    pub train_args: Vec<String>,
}

/// Starts the ranks and returns the exit code for the launcher.
pub fn run(options: &LaunchOptions) -> Result<i32> {
    if options.nproc_per_node == 0 || options.nnodes == 0 {
        return Err(InputError::new("--nproc-per-node and --nnodes must be at least 1").into());
    }
    if options.node_rank >= options.nnodes {
        return Err(InputError::new(format!(
            "--node-rank {} does not fit --nnodes {}: nodes are numbered 0 to nnodes-1",
            options.node_rank, options.nnodes
        ))
        .into());
    }
    let port = match options.master_port {
        Some(port) => port,
        None if options.nnodes == 1 => free_port()?,
        None => DEFAULT_PORT,
    };
    let world = options.nproc_per_node * options.nnodes;
    let exe = std::env::current_exe().context("cannot find the host binary to start the ranks")?;
    // As torchrun: the CPU cores are shared out between the ranks of a node, unless the
    // user chose a thread count.
    let threads = std::env::var("OMP_NUM_THREADS").ok().unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / options.nproc_per_node).max(1).to_string()
    });
    let stop = Arc::new(AtomicUsize::new(0));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_usize(signal, Arc::clone(&stop), signal as usize)?;
    }
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..options.nproc_per_node {
        let rank = options.node_rank * options.nproc_per_node + local;
        // Own process group: a Ctrl-C reaches the launcher, which passes it on once.
        let child = Command::new(&exe)
            .process_group(0)
            .args(&options.train_args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", options.nproc_per_node.to_string())
            .env("GROUP_RANK", options.node_rank.to_string())
            .env("MASTER_ADDR", &options.master_addr)
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads)
            .spawn()
            .with_context(|| format!("cannot start rank {rank}"))?;
        children.push((rank, child));
    }
    eprintln!(
        "launch: {} rank(s) on this node ({} in all, {threads} threads each), rendezvous at {}:{port}",
        options.nproc_per_node, world, options.master_addr
    );
    supervise(children, &stop)
}

/// Waits for the ranks. The first that fails decides the exit code; the others get
/// [`GRACE`] to exit, then are killed. A signal to the launcher goes on to the ranks.
fn supervise(mut running: Vec<(usize, Child)>, stop: &AtomicUsize) -> Result<i32> {
    let mut failed: Option<(usize, i32)> = None;
    let mut deadline: Option<Instant> = None;
    let mut forwarded = false;
    while !running.is_empty() {
        let signal = stop.load(Ordering::SeqCst);
        if signal != 0 && !forwarded {
            for (_, child) in &running {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, signal as i32) };
            }
            forwarded = true;
        }
        let mut still = Vec::new();
        for (rank, mut child) in running {
            match child.try_wait()? {
                None => still.push((rank, child)),
                Some(status) => {
                    let code = exit_code(&status);
                    if code != 0 && failed.is_none() {
                        eprintln!("launch: rank {rank} exited with {}; stopping the other ranks", describe(&status));
                        failed = Some((rank, code));
                        deadline = Some(Instant::now() + GRACE);
                    }
                }
            }
        }
        running = still;
        if deadline.is_some_and(|d| Instant::now() > d) {
            for (rank, child) in &mut running {
                eprintln!("launch: rank {rank} did not stop by itself; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
            running.clear();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(failed.map_or(0, |(_, code)| code))
}

fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "an unknown status".to_owned(),
    }
}

/// A port nothing listens on now (the OS picks it), for a single-node rendezvous.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port for the rendezvous")?;
    Ok(listener.local_addr()?.port())
}
