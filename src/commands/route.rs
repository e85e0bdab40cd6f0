//! `tessera route`: the SRE's view and control of traffic shifting — status, plans,
//! advance, pause/resume, rollback, whitelist, history — against a deployment's store.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};

use actors::handover::DcLinks;
use actors::shift::{self, ShiftReport};
use cells::ids::{DcId, UserId};
use cells::ownership::{self, ChangeMeta, OwnershipTable};
use cells::shift::{default_stages, ShiftPlan, Stage};
use cells::store::url::StoreUrl;
use cells::store::Store;

use crate::open::OpenStore;

#[derive(Args)]
pub struct RouteArgs {
    /// The deployment's store: `remote:HOST:PORT`, `fdb:CLUSTER_FILE` or `embedded:DIR`.
    #[arg(long, global = true, default_value = "remote:127.0.0.1:7400")]
    store: StoreUrl,
    /// Who is making the change (kept in the ownership history).
    #[arg(long, global = true, default_value = "tessera route")]
    who: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: RouteAction,
}

#[derive(Subcommand)]
enum RouteAction {
    /// Slots per DC, the whitelist, and every plan with its stage.
    Status,
    /// Creates a plan moving cells from one DC to another (nothing moves until `advance`).
    Plan {
        #[arg(long)]
        name: String,
        /// Cells, as a list of numbers and ranges: `0-3,7`.
        #[arg(long)]
        cells: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Stages (default `whitelist,1/256,1/8,1/4,1/2,1`).
        #[arg(long, value_delimiter = ',')]
        stages: Option<Vec<String>>,
    },
    /// Moves a plan one stage forward.
    Advance {
        #[arg(long)]
        name: String,
    },
    /// Stops a plan from advancing (rollback stays possible).
    Pause {
        #[arg(long)]
        name: String,
    },
    /// Lets a paused plan advance again.
    Resume {
        #[arg(long)]
        name: String,
    },
    /// Moves a plan back to an earlier stage (`none`: everything back), at once.
    Rollback {
        #[arg(long)]
        name: String,
        #[arg(long)]
        to: String,
    },
    /// Whitelisted users move at the plan's `whitelist` stage (at once if it is done).
    Whitelist {
        #[command(subcommand)]
        change: WhitelistChange,
    },
    /// Deletes a plan that has moved nothing (or was rolled back to `none`).
    Delete {
        #[arg(long)]
        name: String,
    },
    /// The ownership history: every table version with who, when, why and what moved.
    History {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum WhitelistChange {
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        user: String,
    },
    Remove {
        #[arg(long)]
        name: String,
        #[arg(long)]
        user: String,
    },
}

/// `0-3,7` → `[0, 1, 2, 3, 7]`.
fn parse_cells(text: &str) -> Result<Vec<u16>> {
    let mut cells = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |t: &str| -> Result<u16> {
            let n: u16 = t
                .trim()
                .parse()
                .with_context(|| format!("{t:?} is not a cell number"))?;
            if n > 255 {
                bail!("cell {n} is not 0..=255");
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    bail!("cell range {a}-{b} is reversed");
                }
                cells.extend(a..=b);
            }
            None => cells.push(number(part)?),
        }
    }
    Ok(cells)
}

fn dc(text: &str) -> Result<DcId> {
    DcId::new(text).with_context(|| format!("bad DC id {text:?}"))
}

pub fn route(args: RouteArgs) -> Result<ExitCode> {
    let opened = OpenStore::open(&args.store)?;
    let store = Arc::clone(&opened.store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let json = args.json;
    let who = args.who.clone();
    runtime.block_on(async move {
        let links = DcLinks::new(Arc::clone(&store));
        let meta = |why: String| ChangeMeta::new(&who, &why);
        match args.action {
            RouteAction::Status => status(store.as_ref(), json).await,
            RouteAction::Plan {
                name,
                cells,
                from,
                to,
                stages,
            } => {
                let stages = match stages {
                    Some(list) => list
                        .iter()
                        .map(|s| Stage::parse(s))
                        .collect::<Result<Vec<_>, _>>()?,
                    None => default_stages(),
                };
                let plan = ShiftPlan::new(
                    &name,
                    parse_cells(&cells)?,
                    dc(&from)?,
                    dc(&to)?,
                    stages,
                    ownership::now_ms(),
                    &who,
                )?;
                shift::create_plan(store.as_ref(), &plan).await?;
                print_plan(&plan, json)
            }
            RouteAction::Advance { name } => {
                let report = shift::advance(
                    store.as_ref(),
                    &links,
                    &name,
                    &meta(format!("advance {name}")),
                )
                .await?;
                print_report(&report, json)
            }
            RouteAction::Rollback { name, to } => {
                let report = shift::rollback(
                    store.as_ref(),
                    &links,
                    &name,
                    &to,
                    &meta(format!("rollback {name} to {to}")),
                )
                .await?;
                print_report(&report, json)
            }
            RouteAction::Pause { name } => {
                let plan = shift::set_paused(store.as_ref(), &name, true, &who).await?;
                print_plan(&plan, json)
            }
            RouteAction::Resume { name } => {
                let plan = shift::set_paused(store.as_ref(), &name, false, &who).await?;
                print_plan(&plan, json)
            }
            RouteAction::Whitelist { change } => {
                let (name, user, add) = match change {
                    WhitelistChange::Add { name, user } => (name, user, true),
                    WhitelistChange::Remove { name, user } => (name, user, false),
                };
                let user = UserId::new(&user).with_context(|| format!("bad user id {user:?}"))?;
                let why = format!(
                    "whitelist {} {user} in {name}",
                    if add { "add" } else { "remove" }
                );
                let report =
                    shift::whitelist(store.as_ref(), &links, &name, &user, add, &meta(why)).await?;
                print_report(&report, json)
            }
            RouteAction::Delete { name } => {
                shift::delete_plan(store.as_ref(), &name).await?;
                if json {
                    println!("{}", serde_json::json!({"deleted": name}));
                } else {
                    println!("deleted plan {name}");
                }
                Ok(())
            }
            RouteAction::History { from, limit } => {
                history(store.as_ref(), from, limit, json).await
            }
        }
    })?;
    drop(opened);
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &ShiftReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!(
            "plan {}: {} -> {}: {} slots and {} users moved at table version {}, freeze window {:.1} ms",
            report.plan,
            report.from_stage,
            report.to_stage,
            report.slots_moved,
            report.users_moved,
            report.version,
            report.freeze_window_us as f64 / 1e3
        );
    }
    Ok(())
}

use router::admin::plan_json;

fn print_plan(plan: &ShiftPlan, json: bool) -> Result<()> {
    if json {
        println!("{}", plan_json(plan));
    } else {
        println!(
            "plan {}: cells {} {} -> {}, stage {} (next {}), stages {}{}",
            plan.name,
            cells_text(&plan.cells),
            plan.from,
            plan.to,
            plan.stage_name(plan.position),
            plan.stages
                .get(plan.position)
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into()),
            plan.stages
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            if plan.paused { ", PAUSED" } else { "" }
        );
    }
    Ok(())
}

/// `[0,1,2,3,7]` → `0-3,7`.
fn cells_text(cells: &[u16]) -> String {
    let mut parts = Vec::new();
    let mut index = 0;
    while index < cells.len() {
        let start = cells[index];
        let mut end = start;
        while index + 1 < cells.len() && cells[index + 1] == end + 1 {
            index += 1;
            end = cells[index];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        index += 1;
    }
    parts.join(",")
}

async fn status(store: &dyn Store, json: bool) -> Result<()> {
    let table = OwnershipTable::read(store).await?;
    let leases = ownership::read_leases(store).await?;
    let plans = shift::list_plans(store).await?;
    let counts = table.slot_counts();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "table_version": table.version,
                "slots_by_dc": counts.iter().map(|(dc, n)| (dc.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
                "leases": leases.iter().map(|l| serde_json::json!({
                    "dc": l.dc.as_str(), "addr": l.addr, "state": format!("{:?}", l.state),
                    "incarnation": l.incarnation,
                })).collect::<Vec<_>>(),
                "whitelisted_users": table.users.len(),
                "plans": plans.iter().map(plan_json).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("table version {}", table.version);
    println!(
        "{:<10} {:>7} {:>7}  {:<8} {:<22}",
        "DC", "slots", "share", "lease", "address"
    );
    for lease in &leases {
        let slots = counts.get(&lease.dc).copied().unwrap_or(0);
        println!(
            "{:<10} {:>7} {:>6.2}%  {:<8} {:<22}",
            lease.dc.as_str(),
            slots,
            slots as f64 * 100.0 / cells::slot::SLOT_COUNT as f64,
            format!("{:?}", lease.state).to_lowercase(),
            lease.addr
        );
    }
    println!("whitelisted users: {}", table.users.len());
    if plans.is_empty() {
        println!("no shift plans");
        return Ok(());
    }
    println!(
        "\n{:<16} {:<8} {:<8} {:<10} {:<10} {:<12} {:>9} {:<7} updated by",
        "plan", "from", "to", "stage", "next", "cells", "whitelist", "paused"
    );
    for plan in &plans {
        println!(
            "{:<16} {:<8} {:<8} {:<10} {:<10} {:<12} {:>9} {:<7} {}",
            plan.name,
            plan.from.as_str(),
            plan.to.as_str(),
            plan.stage_name(plan.position),
            plan.stages
                .get(plan.position)
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into()),
            cells_text(&plan.cells),
            plan.whitelist.len(),
            if plan.paused { "yes" } else { "no" },
            plan.updated_by
        );
    }
    Ok(())
}

async fn history(store: &dyn Store, from: u64, limit: usize, json: bool) -> Result<()> {
    if limit == 0 || limit > 10_000 {
        bail!("--limit must be 1..=10000");
    }
    let changes = ownership::history(store, from.max(1), limit).await?;
    if json {
        let changes: Vec<_> = changes.iter().map(router::admin::change_json).collect();
        println!("{}", serde_json::to_string(&changes)?);
        return Ok(());
    }
    println!(
        "{:>7}  {:<23}  {:<20}  {:<28}  what",
        "version", "at (UTC)", "who", "why"
    );
    for change in &changes {
        let mut moves: Vec<String> = Vec::new();
        let mut pairs: std::collections::BTreeMap<(String, String), usize> = Default::default();
        for range in &change.slots {
            let key = (
                range
                    .from
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "-".into()),
                range.to.to_string(),
            );
            *pairs.entry(key).or_insert(0) += usize::from(range.last - range.first) + 1;
        }
        for ((from, to), count) in pairs {
            moves.push(format!("{count} slots {from}->{to}"));
        }
        if !change.users.is_empty() {
            moves.push(format!("{} users", change.users.len()));
        }
        if let Some(dead) = &change.declared_dead {
            moves.push(format!("takeover of {dead}"));
        }
        println!(
            "{:>7}  {:<23}  {:<20}  {:<28}  {}",
            change.version,
            utc(change.at_ms),
            change.who,
            change.why,
            moves.join(", ")
        );
    }
    Ok(())
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm` (UTC; proleptic
/// Gregorian calendar, days to civil date after Howard Hinnant's algorithm).
fn utc(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let in_day = ms % 86_400_000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_renders_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(super::utc(1_796_300_283_762), "2026-12-03 12:18:03.762");
        assert_eq!(super::utc(1_709_251_199_999), "2024-02-29 23:59:59.999");
    }

    #[test]
    fn cells_parse_and_print_as_runs() {
        assert_eq!(super::parse_cells("0-3,7").unwrap(), vec![0, 1, 2, 3, 7]);
        assert!(super::parse_cells("3-1").is_err());
        assert!(super::parse_cells("256").is_err());
        assert_eq!(super::cells_text(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    }
}
