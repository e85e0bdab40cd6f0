//! The harness of the `tessera up` tests: a deployment on free loopback ports, a JSON
//! client with the deployment's credentials, and `tessera reconcile`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use drills::httpc;
use serde_json::{json, Value};

fn free_ports(count: usize) -> Vec<u16> {
    // Bind them all at once so they differ, then release them for the deployment.
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `n` consecutive free ports.
fn free_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_ports(1)[0];
        if base > 65_000 {
            continue;
        }
        let all_free = (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no run of {n} free ports");
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

pub fn start_up() -> Up {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let (http_port, store_port) = (ports[0], ports[1]);
    let dc_port = free_run(3);
    let ops_port = free_run(4);
    let mut child = Process::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "up",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--http-port",
            &http_port.to_string(),
            "--store-port",
            &store_port.to_string(),
            "--dc-port",
            &dc_port.to_string(),
            "--ops-port",
            &ops_port.to_string(),
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
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if line == "ready" => break,
            Ok(_) => {}
            Err(_) => panic!("tessera up printed no ready line within 60 s"),
        }
    }
    let credentials: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("credentials.json")).unwrap())
            .unwrap();
    Up {
        child,
        http: format!("127.0.0.1:{http_port}").parse().unwrap(),
        store_port,
        ops_port,
        api_key: credentials["api_key"].as_str().unwrap().to_string(),
        admin_token: credentials["admin_token"].as_str().unwrap().to_string(),
        dir,
    }
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
