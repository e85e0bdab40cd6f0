//! `tessera up`: one command for a complete local deployment — the store, three DC nodes
//! (`dc-a`, `dc-b`, `dc-c`) and the router — on the embedded default store.
//!
//! Owns the data directory layout (`store/`, one log per process, `credentials.json`),
//! the start order (store, DC nodes, router; each waits for the previous one's serving
//! line), readiness (the router's `/ready`), the `ready` line, supervision (a crashed child
//! is restarted with backoff, on the same port) and the clean stop on Ctrl-C/SIGTERM
//! (router first, store last). With `--demo` it seeds demo accounts through the API.
//!
//! Must never: print `ready` before the router answers `/ready` with 200; leave a child
//! running when it returns; overwrite existing credentials.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use router::auth::CredentialsFile;
use serde_json::json;

use crate::httpc;
use crate::local::{self, ChildSpec, Running, LOCAL_DCS};

/// How long the deployment may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often children are checked.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);
/// Grace each child gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What `tessera up` was asked for.
#[derive(Debug, Clone)]
pub struct UpSettings {
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub http_port: u16,
    pub store_port: u16,
    /// dc-a's port; dc-b and dc-c take the next two.
    pub dc_port: u16,
    /// Ops endpoints (/metrics, /health, /ready): the store on this port, dc-a, dc-b and
    /// dc-c on the next three (the router serves them on its API port).
    pub ops_port: u16,
    pub lease_ttl_ms: Option<u64>,
    pub demo: bool,
}

/// Why the deployment could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("port settings: {0}")]
    Ports(String),
    #[error(transparent)]
    Child(#[from] local::LocalError),
    #[error("the router at {0} was not ready within {1} s (see the logs in the data dir)")]
    NotReady(SocketAddr, u64),
    #[error("demo seeding failed: {0}")]
    Demo(String),
}

/// Starts everything, prints the URLs and `ready`, supervises until `shutdown` resolves,
/// then stops every child.
pub async fn run(settings: UpSettings, shutdown: impl Future<Output = ()>) -> Result<(), UpError> {
    let dir = settings.data_dir.clone();
    let dir_error = |source| UpError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(dir_error)?;
    if settings
        .dc_port
        .checked_add(LOCAL_DCS.len() as u16)
        .is_none()
    {
        return Err(UpError::Ports(
            "--dc-port leaves no room for three DCs".into(),
        ));
    }
    let credentials_path = dir.join("credentials.json");
    let credentials = match CredentialsFile::read(&credentials_path) {
        Ok(existing) => existing,
        Err(_) => {
            let fresh = CredentialsFile::generate();
            fresh.write(&credentials_path).map_err(dir_error)?;
            fresh
        }
    };
    let store_listen = format!("127.0.0.1:{}", settings.store_port);
    let mut children: Vec<(Running, Instant)> = Vec::new();
    let ops = |index: u16| format!("127.0.0.1:{}", settings.ops_port + index);
    let store = local::start(
        &settings.exe,
        local::store_spec(&dir, &store_listen, Some(&ops(0))),
    )?;
    let store_addr = store.addr.clone();
    children.push((store, Instant::now()));
    for (index, dc) in LOCAL_DCS.iter().enumerate() {
        let listen = format!("127.0.0.1:{}", settings.dc_port + index as u16);
        let spec = local::dc_spec(
            &dir,
            dc,
            &store_addr,
            &listen,
            settings.lease_ttl_ms,
            Some(&ops(index as u16 + 1)),
        );
        children.push((local::start(&settings.exe, spec)?, Instant::now()));
    }
    let http_listen = format!("127.0.0.1:{}", settings.http_port);
    let router_spec = ChildSpec {
        name: "router".into(),
        args: vec![
            "router".into(),
            "--store".into(),
            format!("remote:{store_addr}").into(),
            "--listen".into(),
            http_listen.clone().into(),
            "--credentials".into(),
            credentials_path.clone().into_os_string(),
        ],
        log: dir.join("router.log"),
    };
    let router = local::start(&settings.exe, router_spec)?;
    let router_addr: SocketAddr = router
        .addr
        .parse()
        .map_err(|_| UpError::Ports(format!("router printed address {:?}", router.addr)))?;
    children.push((router, Instant::now()));
    wait_ready(router_addr).await?;
    if settings.demo {
        seed_demo(router_addr, &credentials.api_key).map_err(UpError::Demo)?;
    }
    println!(
        "store   remote:{store_addr}  (data {})",
        dir.join("store").display()
    );
    for (running, _) in &children[1..=LOCAL_DCS.len()] {
        println!("{:<7} {}", running.spec.name, running.addr);
    }
    println!(
        "router  http://{router_addr}  (API key and admin token in {})",
        credentials_path.display()
    );
    println!("logs    {}/*.log", dir.display());
    println!("ready");
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(SUPERVISE_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                for (running, started) in children.iter_mut() {
                    running.note_healthy(started.elapsed());
                    match running.restart_if_exited(&settings.exe) {
                        Ok(true) => {
                            *started = Instant::now();
                            println!("restarted {} (restart {})", running.spec.name, running.restarts);
                        }
                        Ok(false) => {}
                        Err(error) => tracing::warn!(%error, "restart failed; will retry"),
                    }
                }
            }
        }
    }
    println!("stopping");
    for (running, _) in children.iter_mut().rev() {
        running.stop(STOP_GRACE);
    }
    println!("stopped");
    Ok(())
}

async fn wait_ready(addr: SocketAddr) -> Result<(), UpError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let answer = tokio::task::spawn_blocking(move || {
            httpc::request(addr, "GET", "/ready", None, None, Duration::from_secs(2))
        })
        .await;
        if matches!(answer, Ok(Ok(ref response)) if response.status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(UpError::NotReady(addr, READY_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Demo data: a bank (system account), a hot merchant and ten customers with 1,000.00 USD.
fn seed_demo(addr: SocketAddr, api_key: &str) -> Result<(), String> {
    let post = |path: &str, body: serde_json::Value| -> Result<serde_json::Value, String> {
        let response = httpc::json(addr, "POST", path, Some(api_key), &body)
            .map_err(|e| format!("{path}: {e}"))?;
        if response.status >= 300 {
            return Err(format!(
                "{path}: {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
        Ok(response.json())
    };
    post(
        "/v1/accounts",
        json!({"id": "demo-bank", "user": "demo-bank", "currency": "USD", "kind": "system"}),
    )?;
    post(
        "/v1/accounts",
        json!({"id": "demo-merchant", "user": "demo-merchant", "currency": "USD", "mode": "append"}),
    )?;
    let mut funding = Vec::new();
    for n in 1..=10 {
        post(
            "/v1/accounts",
            json!({"id": format!("demo-alice-{n}"), "user": format!("demo-user-{n}"), "currency": "USD"}),
        )?;
        funding.push(json!({
            "id": format!("demo-fund-{n}"), "from": "demo-bank", "to": format!("demo-alice-{n}"),
            "amount": "1000.00", "currency": "USD",
        }));
    }
    let answer = post("/v1/transfers/batch", json!({ "transfers": funding }))?;
    let results = answer["results"].as_array().cloned().unwrap_or_default();
    if results.len() != 10 || results.iter().any(|r| r["status"] != "accepted") {
        return Err(format!("demo funding: {answer}"));
    }
    println!("demo    accounts demo-bank (system), demo-merchant (append), demo-alice-1..10 (1000.00 USD each)");
    Ok(())
}
