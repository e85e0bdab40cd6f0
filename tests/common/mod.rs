//! The harness of the `tessera up` tests: a deployment on free loopback ports, a JSON
//! client with the deployment's credentials, and `tessera reconcile`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use drills::httpc;
use serde_json::{json, Value};

/// Ports for one deployment: http, store, a run of three (DC nodes) and a run of four
/// (ops endpoints), all distinct and all below the kernel's ephemeral range, so that no
/// outgoing connection of another process can take one between the choice and the bind.
/// Each chosen port is held by a listener until every port is chosen.
struct Ports {
    http: u16,
    store: u16,
    dc: u16,
    ops: u16,
}

/// Where this machine's outgoing connections take their local ports (Linux default if
/// unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn choose_ports() -> Ports {
    use rand::Rng as _;
    let top = ephemeral_start().saturating_sub(8).max(11_000);
    let mut held: Vec<TcpListener> = Vec::new();
    let mut rng = rand::rng();
    // A run of `n` ports, none of them already held, each bound (and kept) now.
    let mut run = |n: u16, held: &mut Vec<TcpListener>| -> u16 {
        for _ in 0..500 {
            let base: u16 = rng.random_range(10_000..top);
            let taken = |port: u16| held.iter().any(|l| l.local_addr().unwrap().port() == port);
            if (base..base + n).any(taken) {
                continue;
            }
            let bound: Vec<TcpListener> = (base..base + n)
                .map_while(|port| TcpListener::bind(("127.0.0.1", port)).ok())
                .collect();
            if bound.len() == n as usize {
                held.extend(bound);
                return base;
            }
        }
        panic!("no run of {n} free ports below {top}");
    };
    let http = run(1, &mut held);
    let store = run(1, &mut held);
    let dc = run(3, &mut held);
    let ops = run(4, &mut held);
    drop(held);
    Ports {
        http,
        store,
        dc,
        ops,
    }
}

pub struct Up {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub store_port: u16,
    /// The store's ops port; dc-a, dc-b, dc-c on the next three.
    pub ops_port: u16,
    pub api_key: String,
    pub admin_token: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Process::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tessera up` on free ports; a start that fails before `ready` (a port taken
/// between the choice and the bind, say) is retried with other ports, up to three times,
/// and the last failure shows the deployment's log.
pub fn start_up() -> Up {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match try_start_up() {
            Ok(up) => return up,
            Err(failure) => {
                eprintln!("tessera up did not start: {failure}");
                failures.push(failure);
            }
        }
    }
    panic!(
        "tessera up never became ready:\n{}",
        failures.join("\n---\n")
    );
}

fn try_start_up() -> Result<Up, String> {
    let dir = tempfile::tempdir().unwrap();
    let ports = choose_ports();
    let mut child = Process::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "up",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--http-port",
            &ports.http.to_string(),
            "--store-port",
            &ports.store.to_string(),
            "--dc-port",
            &ports.dc.to_string(),
            "--ops-port",
            &ports.ops.to_string(),
            "--lease-ttl-ms",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("up.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let failure = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if line == "ready" => break None,
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                break Some("no ready line within 60 s".to_string())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break Some("it exited before printing ready".to_string())
            }
        }
    };
    if let Some(reason) = failure {
        let _ = child.kill();
        let status = child.wait().ok();
        let logs = deployment_logs(dir.path());
        return Err(format!("{reason} (status {status:?})\n{logs}"));
    }
    let credentials: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("credentials.json")).unwrap())
            .unwrap();
    Ok(Up {
        child,
        http: format!("127.0.0.1:{}", ports.http).parse().unwrap(),
        store_port: ports.store,
        ops_port: ports.ops,
        api_key: credentials["api_key"].as_str().unwrap().to_string(),
        admin_token: credentials["admin_token"].as_str().unwrap().to_string(),
        dir,
    })
}

/// The tail of every log in a deployment's data dir, for a failure message.
fn deployment_logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("== {}\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl Up {
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(Some(&self.api_key), method, path, body)
    }

    pub fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
        let response = httpc::request(
            self.http,
            method,
            path,
            token,
            bytes.as_deref(),
            Duration::from_secs(30),
        )
        .unwrap();
        (response.status, response.json())
    }

    pub fn balance(&self, account: &str) -> String {
        let (status, body) = self.call("GET", &format!("/v1/accounts/{account}"), None);
        assert_eq!(status, 200, "{body}");
        body["balance"].as_str().unwrap().to_string()
    }

    /// A transfer, retried with the same id while the answer is retryable.
    pub fn pay(&self, id: &str, from: &str, to: &str, amount: &str) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.call(
                "POST",
                "/v1/transfers",
                Some(
                    json!({"id": id, "from": from, "to": to, "amount": amount, "currency": "USD"}),
                ),
            );
            if body["status"] != "retry" || Instant::now() > deadline {
                return (status, body);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn reconcile(&self, acked: &[String]) -> Value {
        let path = self.dir.path().join("acked.txt");
        let mut file = std::fs::File::create(&path).unwrap();
        for id in acked {
            writeln!(file, "ack {id}").unwrap();
        }
        drop(file);
        let output = Process::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["reconcile", "--json", "--store"])
            .arg(format!("remote:127.0.0.1:{}", self.store_port))
            .arg("--acked")
            .arg(&path)
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| panic!("reconcile: {}", String::from_utf8_lossy(&output.stderr)));
        assert!(output.status.success(), "reconcile: {report}");
        report
    }
}

/// kill -9 of `pid`.
pub fn kill9(pid: &str) {
    assert!(Process::new("kill")
        .args(["-9", pid])
        .status()
        .unwrap()
        .success());
}

/// Processes of the deployment: every child names the store's address.
pub fn pids_of(store_port: u16) -> Vec<String> {
    let output = Process::new("pgrep")
        .args(["-f", &format!("127.0.0.1:{store_port}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

impl Up {
    /// The pid of DC node `dc` of this deployment.
    pub fn dc_pid(&self, dc: &str) -> String {
        let output = Process::new("pgrep")
            .args([
                "-f",
                &format!("dc --id {dc} --store remote:127.0.0.1:{}", self.store_port),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no process for {dc}"))
            .to_string()
    }

    /// Waits until a transfer's credit leg is durable too (accepted means debited).
    pub fn wait_completed(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = self.call("GET", &format!("/v1/transfers/{id}"), None);
            if body["status"] == "completed" {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never completed: {body}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `tessera route <args> --json` against the deployment's store.
    pub fn route(&self, args: &[&str]) -> (bool, Value, String) {
        let output = Process::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("route")
            .args(args)
            .args(["--json", "--store"])
            .arg(format!("remote:127.0.0.1:{}", self.store_port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        (
            output.status.success(),
            value,
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    }

    /// The owner DC of each slot, from the admin API.
    pub fn owners(&self) -> Vec<String> {
        let (status, table) = self.call_as(Some(&self.admin_token), "GET", "/v1/admin/table", None);
        assert_eq!(status, 200, "{table}");
        let mut owners = vec![String::new(); 65_536];
        for run in table["runs"].as_array().unwrap() {
            let (first, last) = (
                run["first"].as_u64().unwrap(),
                run["last"].as_u64().unwrap(),
            );
            for slot in first..=last {
                owners[slot as usize] = run["dc"].as_str().unwrap_or("").to_string();
            }
        }
        owners
    }
}
