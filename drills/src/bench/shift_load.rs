//! The shift stage that `tessera bench http --shift` runs beside its load.
//!
//! Owns: one shift plan created for the run (a fresh name), advanced through every stage
//! through the router's admin API at a fixed interval while the load runs, then rolled
//! back to `none` and deleted, so the deployment's table is as it was; and the record of
//! each step (when, its freeze window, its answer) for the report's latency bump.
//!
//! Must never: run a step after the run's deadline; leave its plan advanced when the load
//! ends early (it rolls back whatever it advanced, and says so if it cannot).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::http::Client;

/// What to move, and how fast.
#[derive(Debug, Clone)]
pub struct ShiftLoad {
    pub admin_token: String,
    pub cells: Vec<u16>,
    pub from: String,
    pub to: String,
    /// Pause before the first step and between steps.
    pub step_interval: Duration,
}

/// One step of the plan as the admin API answered it.
#[derive(Debug, Clone, Serialize)]
pub struct ShiftStep {
    /// `advance` or `rollback`.
    pub action: &'static str,
    pub to_stage: Option<String>,
    /// Milliseconds after the load started, when the step was asked for.
    pub at_ms: u64,
    pub took_ms: f64,
    pub freeze_window_ms: Option<f64>,
    pub status: u16,
    pub error: Option<String>,
}

/// Steps that stop the plan from going on (an admin answer other than 200).
fn failed(step: &ShiftStep) -> bool {
    step.status != 200
}

/// Runs the plan until it reaches its last stage or `done` is set, then rolls back and
/// deletes it. Returns the plan's name and its steps.
pub fn drive(
    target: &str,
    shift: &ShiftLoad,
    run: &str,
    started: Instant,
    done: Arc<AtomicBool>,
    deadline: Duration,
) -> Result<(String, Vec<ShiftStep>), String> {
    // Admin requests carry no keyspace header: the table is shared by both keyspaces.
    let admin = Client::with_token(target, &shift.admin_token, false);
    let name = format!("bench-{run}");
    let body = json!({"name": name, "cells": shift.cells, "from": shift.from, "to": shift.to,
                      "who": "tessera bench http"});
    let (status, answer) = admin.post("/v1/admin/plans", &body)?;
    if status != 201 {
        return Err(format!("cannot create the plan {name}: {status} {answer}"));
    }
    let last_stage = answer["stages"]
        .as_array()
        .and_then(|stages| stages.last())
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut steps = Vec::new();
    let wait = |interval: Duration| {
        let until = Instant::now() + interval;
        while Instant::now() < until && !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        !done.load(Ordering::Relaxed) && started.elapsed() < deadline
    };
    let step = |action: &'static str, path: String, body: Option<Value>| -> ShiftStep {
        let at = started.elapsed();
        let asked = Instant::now();
        let answer = admin.post(&path, &body.unwrap_or_else(|| json!({})));
        let took_ms = asked.elapsed().as_secs_f64() * 1e3;
        let (status, value, error) = match answer {
            Ok((status, value)) => {
                let error = (status != 200).then(|| value.to_string());
                (status, value, error)
            }
            Err(error) => (0, Value::Null, Some(error)),
        };
        ShiftStep {
            action,
            to_stage: value["to_stage"].as_str().map(str::to_string),
            at_ms: at.as_millis() as u64,
            took_ms,
            freeze_window_ms: value["freeze_window_ms"].as_f64(),
            status,
            error,
        }
    };
    let mut advanced = false;
    while wait(shift.step_interval) {
        let taken = step("advance", format!("/v1/admin/plans/{name}/advance"), None);
        let stop = failed(&taken) || taken.to_stage == last_stage;
        advanced |= !failed(&taken);
        steps.push(taken);
        if stop {
            break;
        }
    }
    if advanced {
        // Back to where the table was, under the same load if it still runs.
        wait(shift.step_interval);
        steps.push(step(
            "rollback",
            format!("/v1/admin/plans/{name}/rollback"),
            Some(json!({"to": "none"})),
        ));
    }
    let (status, answer) = admin.delete(&format!("/v1/admin/plans/{name}"))?;
    if status != 200 {
        return Err(format!("cannot delete the plan {name}: {status} {answer}"));
    }
    Ok((name, steps))
}
