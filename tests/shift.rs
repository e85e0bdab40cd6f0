//! Traffic shifting end to end: on a `tessera up` deployment, a shift plan moves a cell
//! from one DC to another through every stage (`tessera route`, and the admin API for one
//! step) and is rolled back, while a client load runs through the router. The load sees
//! only retryable refusals (retried with the same ids until answered), every acknowledged
//! transfer exists exactly once, the ownership history never gives a slot to two DCs at
//! once, and `tessera reconcile` is clean. A second deployment has the plan's destination
//! DC killed (kill -9) while a stage is in effect: the load goes on, the plan either goes
//! on or refuses with a typed reason, and nothing is lost or applied twice.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::start_up;
use drills::httpc;
use serde_json::{json, Value};

const CUSTOMERS: usize = 24;

/// A system account `bank` and `CUSTOMERS` customers with 1,000.00 USD each, every
/// funding leg credited.
fn fund_customers(up: &common::Up) {
    assert_eq!(
        up.call(
            "POST",
            "/v1/accounts",
            Some(json!({"id": "bank", "user": "bank", "currency": "USD", "kind": "system"}))
        )
        .0,
        201
    );
    for n in 0..CUSTOMERS {
        let (status, body) = up.call(
            "POST",
            "/v1/accounts",
            Some(json!({"id": format!("c{n}"), "user": format!("user-{n}"), "currency": "USD"})),
        );
        assert_eq!(status, 201, "{body}");
        let (status, body) = up.pay(&format!("fund-{n}"), "bank", &format!("c{n}"), "1000.00");
        assert_eq!(status, 200, "{body}");
    }
    // Accepted means debited: every funding leg is credited before the load starts, so a
    // refusal for funds could only come from the shift.
    for n in 0..CUSTOMERS {
        up.wait_completed(&format!("fund-{n}"));
    }
}

/// The load: batches of transfers between all customers, each retried with the same id
/// while the answer is retryable, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<Value>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the load; asserts it saw only accepted and retryable answers and returns the
    /// acknowledged ids (with the funding legs).
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "non-retryable refusals under the shift: {failures:?}"
        );
        let mut acked = self.acked.lock().unwrap().clone();
        assert!(
            acked.len() > 100,
            "the load ran ({} acknowledged)",
            acked.len()
        );
        acked.extend((0..CUSTOMERS).map(|n| format!("fund-{n}")));
        acked
    }
}

fn start_load(up: &common::Up) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<Value>::new()));
    let thread = {
        let (stop, acked, failures) = (stop.clone(), acked.clone(), failures.clone());
        let addr = up.http;
        let key = up.api_key.clone();
        std::thread::spawn(move || {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) && round < 10_000 {
                let transfers: Vec<Value> = (0..32)
                    .map(|i| {
                        let from = (round * 7 + i) % CUSTOMERS;
                        let to = (from + 1 + i % (CUSTOMERS - 1)) % CUSTOMERS;
                        json!({"id": format!("l-{round}-{i}"), "from": format!("c{from}"),
                               "to": format!("c{to}"), "amount": "0.01", "currency": "USD"})
                    })
                    .collect();
                let mut pending = transfers;
                let deadline = Instant::now() + Duration::from_secs(30);
                while !pending.is_empty() {
                    assert!(Instant::now() < deadline, "transfers never answered");
                    let response = httpc::json(
                        addr,
                        "POST",
                        "/v1/transfers/batch",
                        Some(&key),
                        &json!({"transfers": pending}),
                    )
                    .unwrap();
                    assert_eq!(response.status, 200);
                    let results = response.json()["results"].as_array().unwrap().clone();
                    let mut again = Vec::new();
                    for (item, result) in pending.iter().zip(results) {
                        match result["status"].as_str() {
                            Some("accepted") => acked
                                .lock()
                                .unwrap()
                                .push(result["id"].as_str().unwrap().to_string()),
                            Some("retry") => again.push(item.clone()),
                            _ => failures.lock().unwrap().push(result),
                        }
                    }
                    pending = again;
                    if !pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                round += 1;
            }
        })
    };
    Load {
        stop,
        acked,
        failures,
        thread,
    }
}

/// A plan `name` for the cell of user-0, from its owner to another DC; returns the cell,
/// the source and the destination.
fn plan_user0_cell(up: &common::Up, name: &str) -> (usize, String, String) {
    let owners = up.owners();
    let slot = {
        let user = cells::ids::UserId::new("user-0").unwrap();
        cells::slot::slot_of(&user).index() as usize
    };
    let cell = slot / 256;
    let from = owners[cell * 256].clone();
    assert!(
        owners[cell * 256..cell * 256 + 256]
            .iter()
            .all(|o| *o == from),
        "bootstrap gives whole cells"
    );
    let to = ["dc-a", "dc-b", "dc-c"]
        .into_iter()
        .find(|dc| *dc != from)
        .unwrap()
        .to_string();
    let (ok, plan, err) = up.route(&[
        "plan",
        "--name",
        name,
        "--cells",
        &cell.to_string(),
        "--from",
        &from,
        "--to",
        &to,
    ]);
    assert!(ok, "{err}");
    assert_eq!(plan["stage"], "none");
    assert_eq!(plan["next"], "whitelist");
    let (ok, _, err) = up.route(&["whitelist", "add", "--name", name, "--user", "user-0"]);
    assert!(ok, "{err}");
    // A user outside the plan's cells is refused.
    let outside = (1..CUSTOMERS)
        .map(|n| format!("user-{n}"))
        .find(|u| {
            cells::slot::slot_of(&cells::ids::UserId::new(u).unwrap()).index() as usize / 256
                != cell
        })
        .unwrap();
    let (ok, _, _) = up.route(&["whitelist", "add", "--name", name, "--user", &outside]);
    assert!(!ok, "a user outside the plan's cells was whitelisted");

    (cell, from, to)
}

/// The history: consecutive versions, every move starts where the previous left it, so no
/// slot was ever given to two DCs at once.
fn check_history(up: &common::Up) {
    let (ok, history, err) = up.route(&["history", "--limit", "10000"]);
    assert!(ok, "{err}");
    let mut owner: Vec<Option<String>> = vec![None; 65_536];
    for (position, change) in history.as_array().unwrap().iter().enumerate() {
        assert_eq!(change["version"].as_u64(), Some(position as u64 + 1));
        for range in change["slots"].as_array().unwrap() {
            for slot in range["first"].as_u64().unwrap()..=range["last"].as_u64().unwrap() {
                assert_eq!(
                    owner[slot as usize].as_deref(),
                    range["from"].as_str(),
                    "version {}: slot {slot}",
                    change["version"]
                );
                owner[slot as usize] = range["to"].as_str().map(str::to_string);
            }
        }
    }
}

/// Waits for the credit leg of the first acknowledged load transfer, then reconciles.
fn reconcile_after_legs(up: &common::Up, acked: &[String]) {
    let first = acked.iter().find(|id| id.starts_with("l-")).unwrap();
    up.wait_completed(first);
    let report = up.reconcile(acked);
    assert_eq!(report["clean"], true, "{report}");
}

fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn a_shift_plan_runs_every_stage_and_rolls_back_under_load() {
    let up = start_up();
    fund_customers(&up);
    let (cell, from, to) = plan_user0_cell(&up, "move-1");
    let load = start_load(&up);
    settle();

    // Every stage forward; the admin API takes one of them.
    let stages = ["whitelist", "1/256", "1/8", "1/4", "1/2", "1"];
    for (index, stage) in stages.iter().enumerate() {
        let report = if index == 3 {
            let (status, report) = up.call_as(
                Some(&up.admin_token),
                "POST",
                "/v1/admin/plans/move-1/advance",
                None,
            );
            assert_eq!(status, 200, "{report}");
            report
        } else {
            let (ok, report, err) = up.route(&["advance", "--name", "move-1"]);
            assert!(ok, "advance to {stage}: {err}");
            report
        };
        assert_eq!(report["to_stage"], *stage, "{report}");
        let owners = up.owners();
        let moved = owners[cell * 256..cell * 256 + 256]
            .iter()
            .take_while(|o| **o == to)
            .count();
        let expected = match *stage {
            "whitelist" => 0,
            "1/256" => 1,
            "1/8" => 32,
            "1/4" => 64,
            "1/2" => 128,
            _ => 256,
        };
        assert_eq!(moved, expected, "stage {stage}");
        assert!(
            owners[cell * 256 + moved..cell * 256 + 256]
                .iter()
                .all(|o| *o == from),
            "stage {stage}: the rest of the cell stays"
        );
        if *stage == "1/8" {
            // Pause stops advancing; resume lets it go on.
            assert!(up.route(&["pause", "--name", "move-1"]).0);
            let (ok, _, err) = up.route(&["advance", "--name", "move-1"]);
            assert!(!ok && err.contains("paused"), "{err}");
            assert!(up.route(&["resume", "--name", "move-1"]).0);
        }
        settle();
    }
    let (ok, _, _) = up.route(&["advance", "--name", "move-1"]);
    assert!(!ok, "advanced past the last stage");

    // Roll back to 1/8, then all the way, at once.
    let (ok, report, err) = up.route(&["rollback", "--name", "move-1", "--to", "1/8"]);
    assert!(ok, "{err}");
    assert_eq!(report["slots_moved"], 256 - 32);
    settle();
    let (ok, report, err) = up.route(&["rollback", "--name", "move-1", "--to", "none"]);
    assert!(ok, "{err}");
    assert_eq!(
        (
            report["slots_moved"].as_u64(),
            report["users_moved"].as_u64()
        ),
        (Some(32), Some(1))
    );
    settle();
    assert!(up.owners()[cell * 256..cell * 256 + 256]
        .iter()
        .all(|o| *o == from));

    let acked = load.finish();
    check_history(&up);
    let (status, plans) = up.call_as(Some(&up.admin_token), "GET", "/v1/admin/plans", None);
    assert_eq!(status, 200);
    assert_eq!(plans["plans"][0]["stage"], "none");
    assert_eq!(
        up.call("GET", "/v1/admin/plans", None).0,
        403,
        "a client key is not admin"
    );
    // A plan at `none` can be deleted through the admin API, once.
    let path = "/v1/admin/plans/move-1";
    assert_eq!(
        up.call("DELETE", path, None).0,
        403,
        "a client key is not admin"
    );
    let (status, body) = up.call_as(Some(&up.admin_token), "DELETE", path, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], "move-1");
    let (status, body) = up.call_as(Some(&up.admin_token), "DELETE", path, None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_plan", "{body}");

    // Every credit leg lands, then the books balance.
    reconcile_after_legs(&up, &acked);
}

#[test]
fn a_dc_killed_during_a_stage_loses_nothing() {
    let up = start_up();
    fund_customers(&up);
    let (cell, _, to) = plan_user0_cell(&up, "move-k");
    let load = start_load(&up);
    settle();
    for stage in ["whitelist", "1/256", "1/8"] {
        let (ok, report, err) = up.route(&["advance", "--name", "move-k"]);
        assert!(ok, "advance to {stage}: {err}");
        assert_eq!(report["to_stage"], stage, "{report}");
        settle();
    }

    // kill -9 of the destination while 1/8 of the cell is served there.
    let victim = up.dc_pid(&to);
    let before_kill = load.acked();
    common::kill9(&victim);

    // The deployment keeps serving: `tessera up` restarts the node, or the survivors take
    // its slots over once its lease (1 s here) expires.
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.acked() < before_kill + 2_000 {
        assert!(
            Instant::now() < deadline,
            "the load stalled after the kill ({} acknowledged since)",
            load.acked() - before_kill
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The plan goes on to the end, or refuses with a typed reason when a takeover moved
    // slots it expected (an SRE then rolls back or deletes it); never a half-done move.
    let mut outcome = Vec::new();
    for _ in 0..3 {
        let (ok, report, err) = up.route(&["advance", "--name", "move-k"]);
        if ok {
            outcome.push(report["to_stage"].as_str().unwrap_or("").to_string());
            settle();
            continue;
        }
        let typed = [
            "owned by",
            "more than one owner",
            "no live lease",
            "did not answer",
            "lease of",
        ];
        assert!(
            typed.iter().any(|reason| err.contains(reason)),
            "advance after the kill failed without a typed reason: {err}"
        );
        outcome.push(format!("refused: {}", err.trim()));
        break;
    }
    eprintln!("advances after the kill: {outcome:?}");
    if outcome.last().map(String::as_str) == Some("1") {
        assert!(
            up.owners()[cell * 256..cell * 256 + 256]
                .iter()
                .all(|o| *o == to),
            "the plan reached 1 but the cell is not all at {to}"
        );
    }
    settle();

    let acked = load.finish();
    check_history(&up);
    reconcile_after_legs(&up, &acked);
}
