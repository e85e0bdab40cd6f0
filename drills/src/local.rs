//! A local deployment: the store, DC nodes and a router as child processes of this one.
//!
//! Owns starting `tessera` child processes (this binary, by path) with their logs in the
//! data directory, waiting for each one's "serving … on ADDR" line, watching them, and
//! restarting one that exits (with backoff), and stopping them all. `tessera up` and
//! `tessera bench dcs` use it; drills will inject their faults into these processes.
//!
//! Must never: leave a child running after it is dropped; restart a child faster than the
//! backoff; wait for a child without a deadline.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a child may take to print its serving line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Backoff between restarts of a crashed child: doubles from the first to the last.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} exited before serving (see {log})")]
    Exited { name: String, log: String },
    #[error("{name} printed no serving line within {seconds} s (see {log})")]
    Timeout {
        name: String,
        seconds: u64,
        log: String,
    },
}

/// What to run for one child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// A short name (`store`, `dc-a`, `router`).
    pub name: String,
    pub args: Vec<OsString>,
    /// Where its stderr (logs) goes; appended to across restarts.
    pub log: PathBuf,
}

/// One running child.
pub struct Running {
    pub spec: ChildSpec,
    /// The address from its serving line.
    pub addr: String,
    child: Child,
    pub restarts: u32,
    backoff: Duration,
    down_since: Option<Instant>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `-KILL`, `-STOP`, `-CONT`) to the child.
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill {signal} failed")))
        }
    }

    /// kill -9 and reap.
    pub fn kill_nine(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the child has exited (reaps it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the child to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = self.signal("-TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_nine();
    }

    /// If the child has exited and its backoff has passed, starts it again with the same
    /// arguments. Returns whether it restarted it (or the error of the attempt).
    pub fn restart_if_exited(&mut self, exe: &Path) -> Result<bool, LocalError> {
        if self.down_since.is_none() {
            let Some(status) = self.exited() else {
                return Ok(false);
            };
            tracing::warn!(child = %self.spec.name, %status, "child exited; will restart");
            self.down_since = Some(Instant::now());
        }
        let since = self.down_since.expect("set above");
        if since.elapsed() < self.backoff {
            return Ok(false);
        }
        self.backoff = (self.backoff * 2).min(RESTART_BACKOFF_MAX);
        let (child, addr) = start_child(exe, &self.spec)?;
        self.child = child;
        self.addr = addr;
        self.restarts += 1;
        self.down_since = None;
        metrics::counter!("tessera_up_restarts_total", "child" => self.spec.name.clone())
            .increment(1);
        tracing::info!(child = %self.spec.name, addr = %self.addr, restarts = self.restarts, "child restarted");
        Ok(true)
    }

    /// Resets the backoff once the child has stayed up for a while.
    pub fn note_healthy(&mut self, up_for: Duration) {
        if self.down_since.is_none() && up_for > RESTART_BACKOFF_MAX {
            self.backoff = RESTART_BACKOFF_MIN;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one child and waits for its serving line.
pub fn start(exe: &Path, spec: ChildSpec) -> Result<Running, LocalError> {
    let (child, addr) = start_child(exe, &spec)?;
    Ok(Running {
        spec,
        addr,
        child,
        restarts: 0,
        backoff: RESTART_BACKOFF_MIN,
        down_since: None,
    })
}

fn start_child(exe: &Path, spec: &ChildSpec) -> Result<(Child, String), LocalError> {
    let spawn_error = |source| LocalError::Spawn {
        name: spec.name.clone(),
        source,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(spawn_error)?;
    let mut child = Command::new(exe)
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(spawn_error)?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = std::sync::mpsc::sync_channel::<String>(64);
    let name = spec.name.clone();
    std::thread::Builder::new()
        .name(format!("stdout-{name}"))
        .spawn(move || {
            // Keeps draining after the serving line so the child never blocks on a full pipe.
            let mut reader = BufReader::new(stdout).lines();
            for line in reader.by_ref().map_while(Result::ok) {
                if lines.try_send(line.clone()).is_err() {
                    tracing::info!(child = %name, "{line}");
                }
            }
        })
        .map_err(spawn_error)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let log = spec.log.display().to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(line) if line.contains("serving") && line.contains(" on ") => {
                let addr = line.rsplit(" on ").next().unwrap_or("").trim().to_string();
                return Ok((child, addr));
            }
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if child.try_wait().ok().flatten().is_some() {
                    return Err(LocalError::Exited {
                        name: spec.name.clone(),
                        log,
                    });
                }
                if left.is_zero() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LocalError::Timeout {
                        name: spec.name.clone(),
                        seconds: START_TIMEOUT.as_secs(),
                        log,
                    });
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                return Err(LocalError::Exited {
                    name: spec.name.clone(),
                    log,
                });
            }
        }
    }
}

/// The three DC names of a local deployment.
pub const LOCAL_DCS: [&str; 3] = ["dc-a", "dc-b", "dc-c"];

/// Arguments of `tessera store` for a local deployment.
pub fn store_spec(data_dir: &Path, listen: &str, ops: Option<&str>) -> ChildSpec {
    let mut args: Vec<OsString> = vec![
        "store".into(),
        "--data".into(),
        data_dir.join("store").into_os_string(),
        "--listen".into(),
        listen.into(),
    ];
    if let Some(ops) = ops {
        args.push("--ops-listen".into());
        args.push(ops.into());
    }
    ChildSpec {
        name: "store".into(),
        args,
        log: data_dir.join("store.log"),
    }
}

/// Arguments of `tessera dc` for DC `dc` of a local deployment.
pub fn dc_spec(
    data_dir: &Path,
    dc: &str,
    store_addr: &str,
    listen: &str,
    lease_ttl_ms: Option<u64>,
    ops: Option<&str>,
) -> ChildSpec {
    let mut args: Vec<OsString> = vec![
        "dc".into(),
        "--id".into(),
        dc.into(),
        "--store".into(),
        format!("remote:{store_addr}").into(),
        "--listen".into(),
        listen.into(),
        "--bootstrap".into(),
        LOCAL_DCS.join(",").into(),
    ];
    if let Some(ttl) = lease_ttl_ms {
        args.push("--lease-ttl-ms".into());
        args.push(ttl.to_string().into());
    }
    if let Some(ops) = ops {
        args.push("--ops-listen".into());
        args.push(ops.into());
    }
    ChildSpec {
        name: dc.into(),
        args,
        log: data_dir.join(format!("{dc}.log")),
    }
}
