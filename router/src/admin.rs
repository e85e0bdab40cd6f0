//! The admin API of shift plans: create, list, get, advance, pause, resume, rollback,
//! whitelist add/remove. Admin token only. The same controller as `tessera route`
//! (`actors::shift`); every change is a new ownership table version with who and why.
//!
//! Must never: run a step for a client key; answer a step before its table change is
//! durable.

use actix_web::{web, HttpRequest, HttpResponse};
use actors::shift::{self, ShiftError};
use cells::ids::{DcId, UserId};
use cells::ledger::ErrorCode;
use cells::ownership::{self, ChangeMeta};
use cells::shift::{default_stages, ShiftPlan, Stage};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{admit, ApiError, ApiResult, ApiState};

const WHO: &str = "router admin API";

fn shift_error(error: ShiftError) -> ApiError {
    let code = match &error {
        ShiftError::Plan(cells::shift::PlanError::Position { .. })
        | ShiftError::Plan(cells::shift::PlanError::Paused(_))
        | ShiftError::Plan(cells::shift::PlanError::WhitelistFull)
        | ShiftError::PlanExists(_)
        | ShiftError::Conflict(_)
        | ShiftError::Diverged { .. }
        | ShiftError::Overlap { .. }
        | ShiftError::TooManyPlans(_) => ErrorCode::PlanConflict,
        ShiftError::Plan(_) => ErrorCode::InvalidPlan,
        ShiftError::UnknownPlan(_) => ErrorCode::UnknownPlan,
        ShiftError::Handover(_)
        | ShiftError::Ownership(_)
        | ShiftError::Store(_)
        | ShiftError::Commit(_) => ErrorCode::Unavailable,
        ShiftError::Record(_) => ErrorCode::Internal,
    };
    ApiError::new(code, error.to_string())
}

/// A plan as the API shows it.
pub fn plan_json(plan: &ShiftPlan) -> Value {
    json!({
        "name": plan.name,
        "cells": plan.cells,
        "from": plan.from.as_str(),
        "to": plan.to.as_str(),
        "stages": plan.stages.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "stage": plan.stage_name(plan.position),
        "next": plan.stages.get(plan.position).map(ToString::to_string),
        "paused": plan.paused,
        "whitelist": plan.whitelist.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        "created_ms": plan.created_ms,
        "updated_ms": plan.updated_ms,
        "updated_by": plan.updated_by,
    })
}

/// One ownership history record as the admin API and `tessera route history --json` show it.
pub fn change_json(change: &ownership::ChangeRecord) -> Value {
    json!({
        "version": change.version, "at_ms": change.at_ms, "who": change.who, "why": change.why,
        "slots": change.slots.iter().map(|r| json!({
            "first": r.first, "last": r.last,
            "from": r.from.as_ref().map(|d| d.as_str()), "to": r.to.as_str(),
        })).collect::<Vec<_>>(),
        "users": change.users.iter().map(|u| json!({
            "user": u.user.as_str(),
            "from": u.from.as_ref().map(|d| d.as_str()),
            "to": u.to.as_ref().map(|d| d.as_str()),
        })).collect::<Vec<_>>(),
        "declared_dead": change.declared_dead.as_ref().map(|d| d.as_str()),
    })
}

fn report_json(report: &shift::ShiftReport) -> Value {
    json!({
        "plan": report.plan,
        "from_stage": report.from_stage,
        "to_stage": report.to_stage,
        "slots_moved": report.slots_moved,
        "users_moved": report.users_moved,
        "version": report.version,
        "freeze_window_ms": report.freeze_window_us as f64 / 1e3,
    })
}

pub async fn list_plans(state: web::Data<ApiState>, request: HttpRequest) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    let plans = shift::list_plans(state.routing.store().as_ref())
        .await
        .map_err(shift_error)?;
    Ok(HttpResponse::Ok().json(json!({"plans": plans.iter().map(plan_json).collect::<Vec<_>>()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePlanBody {
    name: String,
    cells: Vec<u16>,
    from: String,
    to: String,
    #[serde(default)]
    stages: Option<Vec<String>>,
    #[serde(default)]
    who: Option<String>,
}

pub async fn create_plan(
    state: web::Data<ApiState>,
    request: HttpRequest,
    body: web::Json<CreatePlanBody>,
) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    let invalid = |message: String| ApiError::new(ErrorCode::InvalidPlan, message);
    let stages = match &body.stages {
        Some(list) => list
            .iter()
            .map(|s| Stage::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?,
        None => default_stages(),
    };
    let from = DcId::new(&body.from).map_err(|e| invalid(format!("from: {e}")))?;
    let to = DcId::new(&body.to).map_err(|e| invalid(format!("to: {e}")))?;
    let who = body.who.as_deref().unwrap_or(WHO);
    let plan = ShiftPlan::new(
        &body.name,
        body.cells.clone(),
        from,
        to,
        stages,
        ownership::now_ms(),
        who,
    )
    .map_err(|e| invalid(e.to_string()))?;
    shift::create_plan(state.routing.store().as_ref(), &plan)
        .await
        .map_err(shift_error)?;
    Ok(HttpResponse::Created().json(plan_json(&plan)))
}

pub async fn get_plan(
    state: web::Data<ApiState>,
    request: HttpRequest,
    name: web::Path<String>,
) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    let (plan, _) = shift::load_plan(state.routing.store().as_ref(), &name)
        .await
        .map_err(shift_error)?;
    Ok(HttpResponse::Ok().json(plan_json(&plan)))
}

/// Deletes a plan that stands at `none` (rolled back or never advanced).
pub async fn delete_plan(
    state: web::Data<ApiState>,
    request: HttpRequest,
    name: web::Path<String>,
) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    shift::delete_plan(state.routing.store().as_ref(), &name)
        .await
        .map_err(shift_error)?;
    Ok(HttpResponse::Ok().json(json!({"deleted": name.as_str()})))
}

async fn after_step(state: &ApiState) {
    // Route by the new table at once rather than at the next poll.
    let _ = state.routing.refresh_current().await;
}

pub async fn advance(
    state: web::Data<ApiState>,
    request: HttpRequest,
    name: web::Path<String>,
) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    let meta = ChangeMeta::new(WHO, &format!("advance {name}"));
    let report = shift::advance(state.routing.store().as_ref(), &state.links, &name, &meta)
        .await
        .map_err(shift_error)?;
    after_step(&state).await;
    Ok(HttpResponse::Ok().json(report_json(&report)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    to: String,
}

pub async fn rollback(
    state: web::Data<ApiState>,
    request: HttpRequest,
    name: web::Path<String>,
    body: web::Json<RollbackBody>,
) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    let meta = ChangeMeta::new(WHO, &format!("rollback {name} to {}", body.to));
    let report = shift::rollback(
        state.routing.store().as_ref(),
        &state.links,
        &name,
        &body.to,
        &meta,
    )
    .await
    .map_err(shift_error)?;
    after_step(&state).await;
    Ok(HttpResponse::Ok().json(report_json(&report)))
}

async fn set_paused(
    state: &ApiState,
    request: &HttpRequest,
    name: &str,
    paused: bool,
) -> ApiResult {
    let _permit = admit(state, request, true, 1)?;
    let plan = shift::set_paused(state.routing.store().as_ref(), name, paused, WHO)
        .await
        .map_err(shift_error)?;
    Ok(HttpResponse::Ok().json(plan_json(&plan)))
}

pub async fn pause(
    state: web::Data<ApiState>,
    request: HttpRequest,
    name: web::Path<String>,
) -> ApiResult {
    set_paused(&state, &request, &name, true).await
}

pub async fn resume(
    state: web::Data<ApiState>,
    request: HttpRequest,
    name: web::Path<String>,
) -> ApiResult {
    set_paused(&state, &request, &name, false).await
}

async fn whitelist(
    state: &ApiState,
    request: &HttpRequest,
    name: &str,
    user: &str,
    add: bool,
) -> ApiResult {
    let _permit = admit(state, request, true, 1)?;
    let user = UserId::new(user)
        .map_err(|e| ApiError::new(ErrorCode::InvalidId, format!("user {user:?}: {e}")))?;
    let why = format!(
        "whitelist {} {user} in {name}",
        if add { "add" } else { "remove" }
    );
    let meta = ChangeMeta::new(WHO, &why);
    let report = shift::whitelist(
        state.routing.store().as_ref(),
        &state.links,
        name,
        &user,
        add,
        &meta,
    )
    .await
    .map_err(shift_error)?;
    after_step(state).await;
    Ok(HttpResponse::Ok().json(report_json(&report)))
}

pub async fn whitelist_add(
    state: web::Data<ApiState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult {
    whitelist(&state, &request, &path.0, &path.1, true).await
}

pub async fn whitelist_remove(
    state: web::Data<ApiState>,
    request: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult {
    whitelist(&state, &request, &path.0, &path.1, false).await
}
