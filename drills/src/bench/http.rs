//! `tessera bench http`: the router's own load generator.
//!
//! Owns: setting up benchmark accounts through the API (fresh ids per run, in the shadow
//! keyspace by default so a live deployment's real balances are never touched), driving
//! transfers in batches or one per request from a bounded number of keep-alive
//! connections (closed loop, or open loop at a fixed request rate with latency measured
//! from each request's scheduled time so a stall is not hidden), re-sending retryable
//! answers with the same ids, and the report: transfers/s, latency p50/p99/p999/max
//! (HdrHistogram), answers by code, and an SVG chart of throughput and latency per second.
//!
//! Must never: run unbounded (a transfer count and a deadline); count a transfer the
//! router did not accept; write to the real keyspace unless asked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

/// Longest a run may take, whatever it was asked.
pub const RUN_DEADLINE: Duration = Duration::from_secs(600);
pub const CONCURRENCY_MAX: usize = 256;
/// How far ahead of the workers' start the clock of a run starts.
const START_LEAD: Duration = Duration::from_millis(50);
/// Times one transfer is re-sent after retryable answers before it counts as failed.
const RESENDS_MAX: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum HttpBenchError {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("setup failed: {0}")]
    Setup(String),
    #[error("cannot write the chart {path}: {source}")]
    Chart {
        path: String,
        source: std::io::Error,
    },
}

/// One transfer per request, or batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Single,
    Batch,
}

#[derive(Debug, Clone)]
pub struct HttpBenchConfig {
    /// `http://HOST:PORT` of the router.
    pub target: String,
    pub api_key: String,
    pub mode: Mode,
    pub transfers: u64,
    pub batch_size: usize,
    pub concurrency: usize,
    pub accounts: u64,
    /// Requests per second for the whole run (open loop); 0: closed loop.
    pub rate: u64,
    /// Write to the real keyspace instead of the shadow one.
    pub real: bool,
    pub chart: Option<PathBuf>,
    pub progress: bool,
    /// A shift plan to run through the admin API while the load runs.
    pub shift: Option<super::shift_load::ShiftLoad>,
}

impl HttpBenchConfig {
    pub fn validate(&self) -> Result<(), HttpBenchError> {
        let bad = |t: String| Err(HttpBenchError::Config(t));
        if !self.target.starts_with("http://") {
            return bad(format!("--target {} must be http://HOST:PORT", self.target));
        }
        if self.transfers == 0 || self.accounts < 2 {
            return bad("--transfers ≥ 1 and --accounts ≥ 2".into());
        }
        if self.batch_size == 0 || self.batch_size > cells::ledger::BATCH_COMMANDS_MAX {
            return bad(format!(
                "--batch-size must be 1..={}",
                cells::ledger::BATCH_COMMANDS_MAX
            ));
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return bad(format!("--concurrency must be 1..={CONCURRENCY_MAX}"));
        }
        Ok(())
    }

    fn per_request(&self) -> usize {
        match self.mode {
            Mode::Single => 1,
            Mode::Batch => self.batch_size,
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    /// Transfers of the requests scheduled in this second.
    pub transfers: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpBenchReport {
    pub target: String,
    pub mode: Mode,
    pub keyspace: &'static str,
    pub transfers: u64,
    pub batch_size: usize,
    pub concurrency: usize,
    pub rate: u64,
    pub requests: u64,
    pub accepted: u64,
    /// Final answers other than `accepted`, by code (after re-sends of retryable ones).
    pub refused_by_code: BTreeMap<String, u64>,
    /// Retryable answers that were re-sent, by code.
    pub resent_by_code: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub seconds: f64,
    pub transfers_per_second: f64,
    pub requests_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_p999: f64,
    pub latency_ms_max: f64,
    pub per_second: Vec<Second>,
    pub chart: Option<String>,
    /// The shift stage run beside the load (`--shift`), and the latency bump it caused.
    pub shift: Option<ShiftReport>,
}

/// What `--shift` did, and the latency around its steps.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftReport {
    pub plan: String,
    pub steps: Vec<super::shift_load::ShiftStep>,
    /// Highest per-second p99 in the seconds a step ran in (and the second after it).
    pub step_seconds_latency_ms_p99_max: f64,
    /// Median per-second p99 of the other seconds.
    pub quiet_seconds_latency_ms_p99_median: f64,
    /// Set if the plan could not be created, rolled back or deleted.
    pub error: Option<String>,
}

fn shift_report(
    outcome: Result<(String, Vec<super::shift_load::ShiftStep>), String>,
    seconds: &[Second],
) -> ShiftReport {
    let (plan, steps, error) = match outcome {
        Ok((plan, steps)) => (plan, steps, None),
        Err(error) => (String::new(), Vec::new(), Some(error)),
    };
    let busy: std::collections::BTreeSet<u64> = steps
        .iter()
        .flat_map(|step| {
            let first = step.at_ms / 1_000;
            let last = (step.at_ms + step.took_ms.ceil() as u64) / 1_000 + 1;
            first..=last
        })
        .collect();
    let step_max = seconds
        .iter()
        .filter(|s| busy.contains(&s.second))
        .map(|s| s.latency_ms_p99)
        .fold(0.0, f64::max);
    let mut quiet: Vec<f64> = seconds
        .iter()
        .filter(|s| !busy.contains(&s.second))
        .map(|s| s.latency_ms_p99)
        .collect();
    quiet.sort_by(f64::total_cmp);
    ShiftReport {
        plan,
        steps,
        step_seconds_latency_ms_p99_max: step_max,
        quiet_seconds_latency_ms_p99_median: quiet.get(quiet.len() / 2).copied().unwrap_or(0.0),
        error,
    }
}

/// A blocking keep-alive client of the router's API (one per load thread; the shift
/// driver has one with the admin token).
pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
    shadow: bool,
}

impl Client {
    fn new(config: &HttpBenchConfig) -> Client {
        Client::with_token(&config.target, &config.api_key, !config.real)
    }

    /// A client of `target` that sends `token`, with the shadow-keyspace header if `shadow`.
    pub(crate) fn with_token(target: &str, token: &str, shadow: bool) -> Client {
        // Per-phase timeouts instead of a global one: with a global (or resolve) timeout
        // ureq resolves the host on a freshly spawned thread for every call, which cost
        // the load generator more CPU than the rest of its request path.
        let phase = Some(Duration::from_secs(30));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_send_request(phase)
            .timeout_send_body(phase)
            .timeout_recv_response(phase)
            .timeout_recv_body(phase)
            .build()
            .into();
        Client {
            agent,
            base: target.trim_end_matches('/').to_string(),
            auth: format!("Bearer {token}"),
            shadow,
        }
    }

    /// DELETEs `path`; returns the status and the JSON answer.
    pub(crate) fn delete(&self, path: &str) -> Result<(u16, Value), String> {
        let mut response = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_slice(&text).unwrap_or(Value::Null)))
    }

    /// GETs `path`; returns the JSON answer.
    fn get(&self, path: &str) -> Result<Value, String> {
        let mut request = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth);
        if self.shadow {
            request = request.header("tessera-keyspace", "shadow");
        }
        let mut response = request.call().map_err(|e| e.to_string())?;
        let text = response
            .body_mut()
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(serde_json::from_slice(&text).unwrap_or(Value::Null))
    }

    /// POSTs `body`; returns the status and the JSON answer.
    pub(crate) fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let mut request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json");
        if self.shadow {
            request = request.header("tessera-keyspace", "shadow");
        }
        let mut response = request.send(&bytes[..]).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_slice(&text).unwrap_or(Value::Null)))
    }
}

fn transfer(run: &str, n: u64, accounts: u64) -> Value {
    // A cheap, seeded spread of payers and payees.
    let mix = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let from = mix % accounts;
    let to = (from + 1 + (mix >> 20) % (accounts - 1)) % accounts;
    json!({
        "id": format!("{run}-t{n}"),
        "from": format!("{run}-a{from}"),
        "to": format!("{run}-a{to}"),
        "amount": "0.01",
        "currency": "USD",
    })
}

fn setup(client: &Client, config: &HttpBenchConfig, run: &str) -> Result<(), HttpBenchError> {
    let fail = |what: String| HttpBenchError::Setup(what);
    let bank = format!("{run}-bank");
    let (status, body) = client
        .post(
            "/v1/accounts",
            &json!({"id": bank, "user": bank, "currency": "USD", "kind": "system"}),
        )
        .map_err(fail)?;
    if status >= 300 {
        return Err(fail(format!("bank account: {status} {body}")));
    }
    for n in 0..config.accounts {
        let id = format!("{run}-a{n}");
        let (status, body) = client
            .post(
                "/v1/accounts",
                &json!({"id": id, "user": format!("{run}-u{n}"), "currency": "USD"}),
            )
            .map_err(fail)?;
        if status >= 300 {
            return Err(fail(format!("account {id}: {status} {body}")));
        }
    }
    let ids: Vec<u64> = (0..config.accounts).collect();
    for chunk in ids.chunks(cells::ledger::BATCH_COMMANDS_MAX) {
        let transfers: Vec<Value> = chunk
            .iter()
            .map(|n| {
                json!({"id": format!("{run}-fund{n}"), "from": bank, "to": format!("{run}-a{n}"),
                       "amount": "1000000.00", "currency": "USD"})
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = client
                .post("/v1/transfers/batch", &json!({ "transfers": transfers }))
                .map_err(fail)?;
            let all = body["results"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["status"] == "accepted"));
            if status == 200 && all {
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(format!("funding: {status} {body}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Accepted means debited; wait until every credit leg landed so no transfer of the
    // run is refused for funds still on their way.
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 0..config.accounts {
        loop {
            let status = client
                .get(&format!("/v1/transfers/{run}-fund{n}"))
                .map_err(fail)?;
            if status["status"] == "completed" {
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(format!("funding {n} never completed: {status}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

struct Shared {
    next_request: AtomicU64,
    requests: AtomicU64,
    accepted: AtomicU64,
    transport_errors: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
    resent: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<Histogram<u64>>,
    seconds: Mutex<Vec<(u64, Histogram<u64>)>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn worker(
    client: Client,
    config: HttpBenchConfig,
    run: String,
    shared: Arc<Shared>,
    started: Instant,
    bar: ProgressBar,
) {
    let per_request = config.per_request() as u64;
    let requests = config.transfers.div_ceil(per_request);
    let interval = (config.rate > 0).then(|| Duration::from_secs_f64(1.0 / config.rate as f64));
    let mut local = histogram();
    let deadline = started + RUN_DEADLINE;
    if let Some(wait) = started.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    loop {
        let index = shared.next_request.fetch_add(1, Ordering::Relaxed);
        if index >= requests || Instant::now() > deadline {
            break;
        }
        // Open loop: each request has a scheduled time; latency counts from it.
        let scheduled = match interval {
            Some(interval) => {
                let at = started + interval.mul_f64(index as f64);
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                at
            }
            None => Instant::now(),
        };
        let first = index * per_request;
        let count = per_request.min(config.transfers - first);
        let mut pending: Vec<Value> = (first..first + count)
            .map(|n| transfer(&run, n, config.accounts))
            .collect();
        let mut first_answer = None;
        for attempt in 0..=RESENDS_MAX {
            if pending.is_empty() {
                break;
            }
            let (path, body) = match config.mode {
                Mode::Single => ("/v1/transfers", pending[0].clone()),
                Mode::Batch => ("/v1/transfers/batch", json!({ "transfers": pending })),
            };
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let answer = client.post(path, &body);
            if first_answer.is_none() {
                first_answer = Some(scheduled.elapsed());
            }
            let results: Vec<Value> = match answer {
                Ok((_, value)) if config.mode == Mode::Single => vec![value],
                Ok((_, value)) => value["results"].as_array().cloned().unwrap_or_default(),
                Err(_) => {
                    shared.transport_errors.fetch_add(1, Ordering::Relaxed);
                    Vec::new()
                }
            };
            let mut again = Vec::new();
            if results.len() != pending.len() {
                // A lost answer: the same ids again learn the outcome.
                again = pending.clone();
            } else {
                for (item, result) in pending.iter().zip(results) {
                    let code = result["code"]
                        .as_str()
                        .or(result["error"]["code"].as_str())
                        .unwrap_or("none")
                        .to_string();
                    match result["status"].as_str() {
                        Some("accepted") => {
                            shared.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Some("retry") if attempt < RESENDS_MAX => {
                            *shared
                                .resent
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(code)
                                .or_insert(0) += 1;
                            again.push(item.clone());
                        }
                        _ => {
                            *shared
                                .refused
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(code)
                                .or_insert(0) += 1;
                        }
                    }
                }
            }
            pending = again;
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(5 << attempt.min(6)));
            }
        }
        let latency = first_answer.unwrap_or_default();
        let micros = (latency.as_micros() as u64).max(1);
        local.saturating_record(micros);
        let second = scheduled.duration_since(started).as_secs();
        {
            let mut seconds = shared.seconds.lock().unwrap_or_else(|p| p.into_inner());
            while seconds.len() as u64 <= second {
                let next = seconds.len() as u64;
                seconds.push((next, histogram()));
            }
            seconds[second as usize].1.saturating_record(micros);
        }
        bar.inc(count);
    }
    let _ = shared
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .add(&local);
}

/// Runs the benchmark against a live router.
pub fn run(config: HttpBenchConfig) -> Result<HttpBenchReport, HttpBenchError> {
    config.validate()?;
    let run_id = format!(
        "bh{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 10_000_000_000)
            .unwrap_or(0)
    );
    setup(&Client::new(&config), &config, &run_id)?;
    let bar = super::transfers_bar(config.transfers, config.progress);
    let shared = Arc::new(Shared {
        next_request: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        transport_errors: AtomicU64::new(0),
        refused: Mutex::new(BTreeMap::new()),
        resent: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(histogram()),
        seconds: Mutex::new(Vec::new()),
    });
    // Every worker's connection is open before the clock starts (one request each), and
    // the first scheduled request lies a little ahead, so that neither connection set-up
    // nor thread start-up is counted as transfer latency.
    let clients: Vec<Client> = (0..config.concurrency)
        .map(|_| {
            let client = Client::new(&config);
            let _ = client.get("/v1/errors");
            client
        })
        .collect();
    let started = Instant::now() + START_LEAD;
    let threads: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (client, config, run_id, shared, bar) = (
                client,
                config.clone(),
                run_id.clone(),
                Arc::clone(&shared),
                bar.clone(),
            );
            std::thread::spawn(move || worker(client, config, run_id, shared, started, bar))
        })
        .collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shifter = config.shift.clone().map(|shift| {
        let (target, run_id, done) = (config.target.clone(), run_id.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            super::shift_load::drive(&target, &shift, &run_id, started, done, RUN_DEADLINE)
        })
    });
    for thread in threads {
        let _ = thread.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let shift_outcome = shifter.map(|thread| {
        thread
            .join()
            .unwrap_or_else(|_| Err("the shift driver panicked".to_string()))
    });
    bar.finish_and_clear();
    let latency = shared
        .latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1_000.0;
    let per_request = config.per_request() as u64;
    let per_second: Vec<Second> = shared
        .seconds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(second, h)| Second {
            second: *second,
            transfers: h.len() * per_request,
            latency_ms_p50: h.value_at_quantile(0.5) as f64 / 1_000.0,
            latency_ms_p99: h.value_at_quantile(0.99) as f64 / 1_000.0,
        })
        .collect();
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let requests = shared.requests.load(Ordering::Relaxed);
    let chart = match &config.chart {
        Some(path) => {
            std::fs::write(path, svg_chart(&per_second, &config)).map_err(|source| {
                HttpBenchError::Chart {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let take =
        |m: &Mutex<BTreeMap<String, u64>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(HttpBenchReport {
        target: config.target.clone(),
        mode: config.mode,
        keyspace: if config.real { "real" } else { "shadow" },
        transfers: config.transfers,
        batch_size: config.per_request(),
        concurrency: config.concurrency,
        rate: config.rate,
        requests,
        accepted,
        refused_by_code: take(&shared.refused),
        resent_by_code: take(&shared.resent),
        transport_errors: shared.transport_errors.load(Ordering::Relaxed),
        seconds,
        transfers_per_second: accepted as f64 / seconds,
        requests_per_second: requests as f64 / seconds,
        latency_ms_p50: ms(0.5),
        latency_ms_p99: ms(0.99),
        latency_ms_p999: ms(0.999),
        latency_ms_max: latency.max() as f64 / 1_000.0,
        shift: shift_outcome.map(|outcome| shift_report(outcome, &per_second)),
        per_second,
        chart,
    })
}

/// Throughput (transfers/s, left axis) and p50/p99 latency (ms, right axis) per second.
pub fn svg_chart(seconds: &[Second], config: &HttpBenchConfig) -> String {
    let (width, height, pad) = (900.0f64, 360.0f64, 60.0f64);
    let n = seconds.len().max(2) as f64;
    let max_rate = seconds
        .iter()
        .map(|s| s.transfers)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_ms = seconds
        .iter()
        .map(|s| s.latency_ms_p99)
        .fold(1.0f64, f64::max);
    let x = |i: usize| pad + (width - 2.0 * pad) * i as f64 / (n - 1.0);
    let y = |v: f64, max: f64| height - pad - (height - 2.0 * pad) * v / max;
    let line = |values: Vec<f64>, max: f64| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v, max)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rate = line(
        seconds.iter().map(|s| s.transfers as f64).collect(),
        max_rate,
    );
    let p50 = line(seconds.iter().map(|s| s.latency_ms_p50).collect(), max_ms);
    let p99 = line(seconds.iter().map(|s| s.latency_ms_p99).collect(), max_ms);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{pad}" y="20" font-size="14">tessera bench http — {mode:?}, {per} per request, concurrency {c}{rate_text}</text>
<line x1="{pad}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{bottom}" stroke="black"/>
<line x1="{right}" y1="{pad}" x2="{right}" y2="{bottom}" stroke="black"/>
<text x="5" y="{pad}" fill="#1f77b4">{max_rate:.0}/s</text>
<text x="5" y="{bottom}" fill="#1f77b4">0</text>
<text x="{right_label}" y="{pad}" fill="#d62728">{max_ms:.1} ms</text>
<text x="{mid}" y="{axis_label}">seconds (0–{last})</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{rate}"/>
<polyline fill="none" stroke="#ff7f0e" stroke-width="1.5" points="{p50}"/>
<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{p99}"/>
<text x="{pad}" y="{legend}" fill="#1f77b4">transfers/s</text>
<text x="{legend2}" y="{legend}" fill="#ff7f0e">latency p50</text>
<text x="{legend3}" y="{legend}" fill="#d62728">latency p99</text>
</svg>
"##,
        mode = config.mode,
        per = config.per_request(),
        c = config.concurrency,
        rate_text = if config.rate > 0 {
            format!(", {} requests/s offered", config.rate)
        } else {
            String::new()
        },
        bottom = height - pad,
        right = width - pad,
        right_label = width - pad + 5.0,
        mid = width / 2.0 - 40.0,
        axis_label = height - pad + 20.0,
        last = seconds.len().saturating_sub(1),
        legend = height - 10.0,
        legend2 = pad + 120.0,
        legend3 = pad + 240.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::shift_load::ShiftStep;

    fn second(second: u64, p99: f64) -> Second {
        Second {
            second,
            transfers: 100,
            latency_ms_p50: 1.0,
            latency_ms_p99: p99,
        }
    }

    #[test]
    fn the_bump_compares_step_seconds_with_quiet_ones() {
        let seconds: Vec<Second> = (0..10)
            .map(|s| second(s, if s == 4 { 90.0 } else { 5.0 + s as f64 }))
            .collect();
        let step = ShiftStep {
            action: "advance",
            to_stage: Some("1/8".into()),
            at_ms: 3_900,
            took_ms: 200.0,
            freeze_window_ms: Some(150.0),
            status: 200,
            error: None,
        };
        let report = shift_report(Ok(("p".into(), vec![step])), &seconds);
        // Seconds 3, 4 and 5 hold the step (it ends in second 4; one more after it).
        assert_eq!(report.step_seconds_latency_ms_p99_max, 90.0);
        // Quiet seconds: 0, 1, 2, 6, 7, 8, 9 → p99 5, 6, 7, 11, 12, 13, 14; median 11.
        assert_eq!(report.quiet_seconds_latency_ms_p99_median, 11.0);
        assert!(report.error.is_none());
    }

    #[test]
    fn a_failed_plan_is_reported_not_hidden() {
        let report = shift_report(Err("cannot create".into()), &[second(0, 3.0)]);
        assert_eq!(report.error.as_deref(), Some("cannot create"));
        assert!(report.steps.is_empty());
    }
}
