//! The client HTTP API (actix-web): JSON, amounts as decimal strings with an explicit
//! currency, every write idempotent by a client-chosen id.
//!
//! Owns turning requests into ledger [`Command`]s (validating every field into typed ids
//! and amounts first: bad input gets its typed error and reaches no DC), running them
//! through [`Routing`], and turning results into JSON with the stable error table's codes
//! and HTTP statuses. Also serves `/v1/errors`, `/v1/openapi.json`, `/health`, `/ready`,
//! `/metrics` and the admin view of the ownership table.
//!
//! Must never: answer a write before the owning DC answered it; accept a body, a batch or
//! a request count over its limit; hang (overload answers 429/503 with `Retry-After`).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use cells::ids::{AccountId, HoldId, TransferId, UserId};
use cells::keys::Keyspace;
use cells::ledger::{
    CaptureRequest, Command, CommandResult, ErrorCode, HoldRequest, Outcome, TransferRequest,
    TransferStatus, BATCH_COMMANDS_MAX,
};
use cells::money::{Amount, Currency};
use cells::records::{self, AccountKind, AccountSpec, HoldState, HotMode};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::auth::{Auth, Refusal};
use crate::routing::Routing;

/// Largest request body (a full batch of 8,190 transfers is about 1.3 MB).
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Requests being served at once; more get 503 with `Retry-After`.
pub const CONCURRENT_REQUESTS_MAX: usize = 1_024;
/// Largest page of a statement.
pub const POSTINGS_PAGE_MAX: usize = 1_000;
pub const POSTINGS_PAGE_DEFAULT: usize = 100;
/// Longest hold expiry a client may ask for (30 days).
pub const HOLD_EXPIRY_MS_MAX: u64 = 30 * 24 * 3_600 * 1_000;

/// What every handler shares.
pub struct ApiState {
    pub routing: Arc<Routing>,
    /// Links to DC nodes for the admin API's shift steps.
    pub links: actors::handover::DcLinks,
    pub auth: Auth,
    pub in_flight: Semaphore,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl ApiState {
    pub fn new(
        routing: Arc<Routing>,
        auth: Auth,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> ApiState {
        ApiState {
            links: actors::handover::DcLinks::new(Arc::clone(routing.store())),
            routing,
            auth,
            in_flight: Semaphore::new(CONCURRENT_REQUESTS_MAX),
            metrics,
        }
    }
}

/// An API error: a code of the stable table, and a message.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            retry_after_s: if code.is_retryable() { Some(1) } else { None },
        }
    }

    pub(crate) fn of(code: ErrorCode) -> ApiError {
        ApiError::new(code, code.info().meaning)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.info().http_status).unwrap_or(StatusCode::BAD_REQUEST)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after_s {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        metrics::counter!("tessera_router_http_errors_total", "code" => self.code.name())
            .increment(1);
        response.json(error_body(self.code, &self.message))
    }
}

fn error_body(code: ErrorCode, message: &str) -> Value {
    let info = code.info();
    json!({
        "error": {
            "code": info.name,
            "number": info.number,
            "retryable": info.retryable,
            "message": message,
        }
    })
}

pub(crate) type ApiResult = Result<HttpResponse, ApiError>;

/// The API's routes.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .app_data(
            web::JsonConfig::default()
                .limit(BODY_BYTES_MAX)
                .error_handler(|error, _| {
                    let code = match &error {
                        actix_web::error::JsonPayloadError::Overflow { .. }
                        | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                            ErrorCode::BodyTooLarge
                        }
                        _ => ErrorCode::MalformedRequest,
                    };
                    ApiError::new(code, error.to_string()).into()
                }),
        )
        .app_data(web::QueryConfig::default().error_handler(|error, _| {
            ApiError::new(ErrorCode::MalformedRequest, error.to_string()).into()
        }))
        .app_data(web::PathConfig::default().error_handler(|error, _| {
            ApiError::new(ErrorCode::MalformedRequest, error.to_string()).into()
        }))
        .route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics_text))
        .route("/v1/errors", web::get().to(errors))
        .route("/v1/openapi.json", web::get().to(openapi))
        .route("/v1/accounts", web::post().to(create_account))
        .route("/v1/accounts/{id}", web::get().to(get_account))
        .route("/v1/accounts/{id}/postings", web::get().to(list_postings))
        .route("/v1/transfers", web::post().to(create_transfer))
        .route("/v1/transfers/batch", web::post().to(create_transfers))
        .route("/v1/transfers/{id}", web::get().to(get_transfer))
        .route("/v1/holds", web::post().to(create_hold))
        .route("/v1/holds/{id}", web::get().to(get_hold))
        .route("/v1/holds/{id}/release", web::post().to(release_hold))
        .route("/v1/holds/{id}/capture", web::post().to(capture_hold))
        .route("/v1/admin/table", web::get().to(admin_table))
        .route("/v1/admin/history", web::get().to(admin_history))
        .route("/v1/admin/plans", web::get().to(crate::admin::list_plans))
        .route("/v1/admin/plans", web::post().to(crate::admin::create_plan))
        .route(
            "/v1/admin/plans/{name}",
            web::get().to(crate::admin::get_plan),
        )
        .route(
            "/v1/admin/plans/{name}",
            web::delete().to(crate::admin::delete_plan),
        )
        .route(
            "/v1/admin/plans/{name}/advance",
            web::post().to(crate::admin::advance),
        )
        .route(
            "/v1/admin/plans/{name}/pause",
            web::post().to(crate::admin::pause),
        )
        .route(
            "/v1/admin/plans/{name}/resume",
            web::post().to(crate::admin::resume),
        )
        .route(
            "/v1/admin/plans/{name}/rollback",
            web::post().to(crate::admin::rollback),
        )
        .route(
            "/v1/admin/plans/{name}/whitelist/{user}",
            web::put().to(crate::admin::whitelist_add),
        )
        .route(
            "/v1/admin/plans/{name}/whitelist/{user}",
            web::delete().to(crate::admin::whitelist_remove),
        )
        .default_service(web::to(|| async {
            ApiError::new(ErrorCode::NotFound, "no endpoint has this path and method")
                .error_response()
        }));
}

/// The routes and methods the API serves (the OpenAPI test checks the document against it).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/v1/errors"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/accounts"),
    ("get", "/v1/accounts/{id}"),
    ("get", "/v1/accounts/{id}/postings"),
    ("post", "/v1/transfers"),
    ("post", "/v1/transfers/batch"),
    ("get", "/v1/transfers/{id}"),
    ("post", "/v1/holds"),
    ("get", "/v1/holds/{id}"),
    ("post", "/v1/holds/{id}/release"),
    ("post", "/v1/holds/{id}/capture"),
    ("get", "/v1/admin/table"),
    ("get", "/v1/admin/history"),
    ("get", "/v1/admin/plans"),
    ("post", "/v1/admin/plans"),
    ("get", "/v1/admin/plans/{name}"),
    ("delete", "/v1/admin/plans/{name}"),
    ("post", "/v1/admin/plans/{name}/advance"),
    ("post", "/v1/admin/plans/{name}/pause"),
    ("post", "/v1/admin/plans/{name}/resume"),
    ("post", "/v1/admin/plans/{name}/rollback"),
    ("put", "/v1/admin/plans/{name}/whitelist/{user}"),
    ("delete", "/v1/admin/plans/{name}/whitelist/{user}"),
];

/// The OpenAPI document (hand-written; a test checks it lists exactly [`ROUTES`]).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    let table = state.routing.table();
    let links = state.routing.links();
    let owners = table.slot_counts();
    let owned: usize = owners.values().sum();
    let ready = table.version > 0
        && owned == cells::slot::SLOT_COUNT as usize
        && owners
            .keys()
            .all(|dc| links.iter().any(|(linked, _, up)| linked == dc && *up));
    let body = json!({
        "ready": ready,
        "table_version": table.version,
        "dcs": links.iter().map(|(dc, addr, up)| json!({
            "dc": dc.as_str(), "addr": addr, "connected": up,
            "slots": owners.get(dc).copied().unwrap_or(0),
        })).collect::<Vec<_>>(),
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(body)
    }
}

async fn metrics_text(state: web::Data<ApiState>) -> HttpResponse {
    match &state.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::NotFound().finish(),
    }
}

async fn errors() -> HttpResponse {
    let rows: Vec<Value> = ErrorCode::TABLE
        .iter()
        .map(|row| {
            json!({
                "code": row.name,
                "number": row.number,
                "http_status": row.http_status,
                "retryable": row.retryable,
                "maybe_committed": row.maybe_committed,
                "meaning": row.meaning,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "errors": rows }))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// Checks credentials and takes a slot of the concurrency limit.
pub(crate) fn admit<'a>(
    state: &'a ApiState,
    request: &HttpRequest,
    admin_only: bool,
    cost: u64,
) -> Result<tokio::sync::SemaphorePermit<'a>, ApiError> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match state.auth.check(header, admin_only, cost) {
        Ok(_) => {}
        Err(Refusal::Unauthorized) => return Err(ApiError::of(ErrorCode::Unauthorized)),
        Err(Refusal::Forbidden) => return Err(ApiError::of(ErrorCode::Forbidden)),
        Err(Refusal::RateLimited { retry_after_s }) => {
            return Err(ApiError {
                code: ErrorCode::RateLimited,
                message: ErrorCode::RateLimited.info().meaning.into(),
                retry_after_s: Some(retry_after_s),
            })
        }
    }
    state.in_flight.try_acquire().map_err(|_| {
        ApiError::new(
            ErrorCode::Overloaded,
            "the router is serving its maximum of concurrent requests",
        )
    })
}

/// The header that sends a request to the shadow keyspace (load tests against a live
/// deployment: shadow accounts and transfers never touch a real balance).
pub const KEYSPACE_HEADER: &str = "tessera-keyspace";

/// The keyspace a request names (`tessera-keyspace: shadow`), real by default.
fn space_of(request: &HttpRequest) -> Keyspace {
    match request.headers().get(KEYSPACE_HEADER).map(|v| v.as_bytes()) {
        Some(b"shadow") => Keyspace::Shadow,
        _ => Keyspace::Real,
    }
}

async fn run_one(state: &ApiState, space: Keyspace, command: Command) -> CommandResult {
    let (mut results, _) = state.routing.execute(space, vec![command]).await;
    results.pop().unwrap_or(Err(ErrorCode::Internal))
}

fn parse_currency(text: &str) -> Result<Currency, ApiError> {
    Currency::from_code(text).map_err(|e| ApiError::new(ErrorCode::from(e.clone()), e.to_string()))
}

fn parse_amount(text: &str, currency: Currency) -> Result<Amount, ApiError> {
    Amount::parse(text, currency)
        .map_err(|e| ApiError::new(ErrorCode::from(e.clone()), format!("amount {text:?}: {e}")))
}

fn parse_id<T>(
    text: &str,
    what: &str,
    make: impl Fn(&str) -> Result<T, cells::ids::IdError>,
) -> Result<T, ApiError> {
    make(text).map_err(|e| ApiError::new(ErrorCode::InvalidId, format!("{what} {text:?}: {e}")))
}

/// A minor-unit count as a decimal string of the currency (`-12.50`).
pub fn decimal(minor_units: i128, currency: Currency) -> String {
    match Decimal::try_from_i128_with_scale(minor_units, currency.scale()) {
        Ok(value) => value.to_string(),
        Err(_) => format!("{minor_units}e-{}", currency.scale()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccountBody {
    id: String,
    user: String,
    currency: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    overdraft_limit: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

fn account_spec(body: &CreateAccountBody) -> Result<AccountSpec, ApiError> {
    let currency = parse_currency(&body.currency)?;
    let kind = match body.kind.as_deref().unwrap_or("customer") {
        "customer" => AccountKind::Customer,
        "system" => AccountKind::System,
        other => {
            return Err(ApiError::new(
                ErrorCode::MalformedRequest,
                format!("kind {other:?} is not \"customer\" or \"system\""),
            ))
        }
    };
    let mode = match body.mode.as_deref().unwrap_or("standard") {
        "standard" => HotMode::Standard,
        "append" => HotMode::Append,
        other => match other.strip_prefix("split:").map(str::parse::<u16>) {
            Some(Ok(parts)) => HotMode::Split { parts },
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidMode,
                    format!("mode {other:?} is not \"standard\", \"append\" or \"split:N\""),
                ))
            }
        },
    };
    let overdraft_limit = match body.overdraft_limit.as_deref() {
        None | Some("0") => 0,
        Some(text) => parse_amount(text, currency)
            .map_err(|e| ApiError::new(ErrorCode::InvalidOverdraftLimit, e.message))?
            .minor_units(),
    };
    Ok(AccountSpec {
        id: parse_id(&body.id, "account id", AccountId::new)?,
        user: parse_id(&body.user, "user id", UserId::new)?,
        currency,
        kind,
        overdraft_limit,
        mode,
    })
}

fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::Customer => "customer",
        AccountKind::System => "system",
    }
}

fn mode_name(mode: HotMode) -> String {
    match mode {
        HotMode::Standard => "standard".into(),
        HotMode::Append => "append".into(),
        HotMode::Split { parts } => format!("split:{parts}"),
    }
}

fn spec_json(spec: &AccountSpec) -> Value {
    json!({
        "id": spec.id.as_str(),
        "user": spec.user.as_str(),
        "currency": spec.currency.code(),
        "kind": kind_name(spec.kind),
        "overdraft_limit": decimal(i128::from(spec.overdraft_limit), spec.currency),
        "mode": mode_name(spec.mode),
    })
}

async fn create_account(
    state: web::Data<ApiState>,
    request: HttpRequest,
    body: web::Json<CreateAccountBody>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let spec = account_spec(&body)?;
    let view = spec_json(&spec);
    match run_one(&state, space_of(&request), Command::CreateAccount(spec)).await {
        Ok(_) => Ok(HttpResponse::Created().json(with_status(view, "created"))),
        Err(ErrorCode::AccountExists) => Ok(HttpResponse::Ok().json(with_status(view, "exists"))),
        Err(code) => Err(ApiError::of(code)),
    }
}

fn with_status(mut value: Value, status: &str) -> Value {
    value["status"] = json!(status);
    value
}

async fn get_account(
    state: web::Data<ApiState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let id = parse_id(&id, "account id", AccountId::new)?;
    match run_one(&state, space_of(&request), Command::LookupAccount(id)).await {
        Ok(Outcome::Account(view)) => {
            let currency = view.spec.currency;
            let mut body = spec_json(&view.spec);
            body["balance"] = json!(decimal(view.balance, currency));
            body["available"] = json!(decimal(view.available, currency));
            body["frozen"] = json!(decimal(view.frozen, currency));
            Ok(HttpResponse::Ok().json(body))
        }
        Ok(_) => Err(ApiError::of(ErrorCode::Internal)),
        Err(code) => Err(ApiError::of(code)),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    #[serde(default)]
    cursor: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_postings(
    state: web::Data<ApiState>,
    request: HttpRequest,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let id = parse_id(&id, "account id", AccountId::new)?;
    let limit = query.limit.unwrap_or(POSTINGS_PAGE_DEFAULT);
    if limit == 0 || limit > POSTINGS_PAGE_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidLimit,
            format!("limit must be 1..={POSTINGS_PAGE_MAX}"),
        ));
    }
    let currency = match run_one(
        &state,
        space_of(&request),
        Command::LookupAccount(id.clone()),
    )
    .await
    {
        Ok(Outcome::Account(view)) => view.spec.currency,
        Ok(_) => return Err(ApiError::of(ErrorCode::Internal)),
        Err(code) => return Err(ApiError::of(code)),
    };
    let rows = cells::ledger::statement::read(
        state.routing.store().as_ref(),
        space_of(&request),
        &id,
        query.cursor.unwrap_or(0),
        limit + 1,
    )
    .await
    .map_err(|error| ApiError::of(error.code()))?;
    let mut postings = Vec::with_capacity(rows.len().min(limit));
    let mut next_cursor = None;
    for (index, (seq, posting)) in rows.iter().enumerate() {
        if index == limit {
            next_cursor = Some(*seq);
            break;
        }
        let (source_kind, source) = match &posting.source {
            records::PostingSource::Transfer(id) => ("transfer", id.as_str()),
            records::PostingSource::Capture(id) => ("capture", id.as_str()),
        };
        postings.push(json!({
            "seq": seq,
            "amount": decimal(i128::from(posting.amount), currency),
            "counterparty": posting.counterparty.as_str(),
            "source": source_kind,
            "source_id": source,
        }));
    }
    Ok(HttpResponse::Ok().json(json!({
        "account": id.as_str(),
        "currency": currency.code(),
        "postings": postings,
        "next_cursor": next_cursor,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    id: String,
    from: String,
    to: String,
    amount: String,
    currency: String,
}

fn transfer_command(body: &TransferBody) -> Result<Command, ApiError> {
    let currency = parse_currency(&body.currency)?;
    Ok(Command::Transfer(TransferRequest {
        id: parse_id(&body.id, "transfer id", TransferId::new)?,
        from: parse_id(&body.from, "account id", AccountId::new)?,
        to: parse_id(&body.to, "account id", AccountId::new)?,
        amount: parse_amount(&body.amount, currency)?,
        currency,
    }))
}

/// `{"id","status","code"}` of one transfer result (`message` only for items that did not
/// parse). Serialized straight from this struct: a batch answers up to 8,190 of them.
#[derive(Debug, Serialize)]
struct TransferResult<'a> {
    id: &'a str,
    status: &'static str,
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

fn transfer_result<'a>(id: &'a str, result: &CommandResult) -> (StatusCode, TransferResult<'a>) {
    match result {
        Ok(_) => (
            StatusCode::OK,
            TransferResult {
                id,
                status: "accepted",
                code: None,
                message: None,
            },
        ),
        Err(code) => {
            let info = code.info();
            let status = if info.retryable { "retry" } else { "rejected" };
            (
                StatusCode::from_u16(info.http_status).unwrap_or(StatusCode::BAD_REQUEST),
                TransferResult {
                    id,
                    status,
                    code: Some(info.name),
                    message: None,
                },
            )
        }
    }
}

async fn create_transfer(
    state: web::Data<ApiState>,
    request: HttpRequest,
    body: web::Json<TransferBody>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let command = transfer_command(&body)?;
    let result = run_one(&state, space_of(&request), command).await;
    let (status, body) = transfer_result(&body.id, &result);
    let mut response = HttpResponse::build(status);
    if matches!(&result, Err(code) if code.is_retryable()) {
        response.insert_header((header::RETRY_AFTER, "1"));
    }
    Ok(response.json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Kept raw: each item is parsed on its own, so a bad item gets its own error.
    transfers: Vec<Box<RawValue>>,
}

/// The id of an item that did not parse, if it has a string one.
#[derive(Deserialize)]
struct IdProbe {
    id: Option<Value>,
}

/// The string `id` of a batch item (empty if it has none), for the answer to a bad item.
fn item_id(item: &RawValue) -> String {
    match serde_json::from_str::<IdProbe>(item.get()) {
        Ok(IdProbe {
            id: Some(Value::String(id)),
        }) => id,
        _ => String::new(),
    }
}

#[derive(Serialize)]
struct BatchResults<'a> {
    results: Vec<TransferResult<'a>>,
}

async fn create_transfers(
    state: web::Data<ApiState>,
    request: HttpRequest,
    body: web::Json<BatchBody>,
) -> ApiResult {
    let count = body.transfers.len();
    if count > BATCH_COMMANDS_MAX {
        return Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!("{count} transfers; at most {BATCH_COMMANDS_MAX} per batch"),
        ));
    }
    let _permit = admit(&state, &request, false, count as u64)?;
    // Items that do not parse get their own error; the rest run as one batch, whose answers
    // come back in the order of its commands.
    let mut commands = Vec::with_capacity(count);
    let mut ids: Vec<String> = Vec::with_capacity(count);
    let mut refusals: Vec<Option<ApiError>> = Vec::with_capacity(count);
    for item in &body.transfers {
        let parsed = serde_json::from_str::<TransferBody>(item.get())
            .map_err(|e| ApiError::new(ErrorCode::MalformedRequest, e.to_string()))
            .and_then(|body| Ok((transfer_command(&body)?, body.id)));
        match parsed {
            Ok((command, id)) => {
                commands.push(command);
                ids.push(id);
                refusals.push(None);
            }
            Err(error) => {
                ids.push(item_id(item));
                refusals.push(Some(error));
            }
        }
    }
    let (answers, _) = state.routing.execute(space_of(&request), commands).await;
    let mut answers = answers.iter();
    let results = ids
        .iter()
        .zip(refusals)
        .map(|(id, refusal)| match refusal {
            Some(error) => TransferResult {
                id,
                status: "rejected",
                code: Some(error.code.name()),
                message: Some(error.message),
            },
            None => transfer_result(id, answers.next().expect("one answer per command")).1,
        })
        .collect();
    Ok(HttpResponse::Ok().json(BatchResults { results }))
}

async fn get_transfer(
    state: web::Data<ApiState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let id = parse_id(&id, "transfer id", TransferId::new)?;
    match run_one(&state, space_of(&request), Command::LookupTransfer(id)).await {
        Ok(Outcome::Transfer(view)) => {
            let (status, code) = match view.status {
                TransferStatus::Accepted => ("accepted", Value::Null),
                TransferStatus::Completed => ("completed", Value::Null),
                TransferStatus::Rejected(code) => ("rejected", json!(code.name())),
            };
            Ok(HttpResponse::Ok().json(json!({
                "id": view.id.as_str(),
                "from": view.from.as_str(),
                "to": view.to.as_str(),
                "amount": decimal(i128::from(view.amount.minor_units()), view.currency),
                "currency": view.currency.code(),
                "status": status,
                "code": code,
            })))
        }
        Ok(_) => Err(ApiError::of(ErrorCode::Internal)),
        Err(code) => Err(ApiError::of(code)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    id: String,
    account: String,
    amount: String,
    currency: String,
    #[serde(default)]
    expires_in_ms: Option<u64>,
}

async fn create_hold(
    state: web::Data<ApiState>,
    request: HttpRequest,
    body: web::Json<HoldBody>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let currency = parse_currency(&body.currency)?;
    if let Some(ms) = body.expires_in_ms {
        if ms == 0 || ms > HOLD_EXPIRY_MS_MAX {
            return Err(ApiError::new(
                ErrorCode::InvalidExpiry,
                format!("expires_in_ms must be 1..={HOLD_EXPIRY_MS_MAX}"),
            ));
        }
    }
    let command = Command::Hold(HoldRequest {
        id: parse_id(&body.id, "hold id", HoldId::new)?,
        account: parse_id(&body.account, "account id", AccountId::new)?,
        amount: parse_amount(&body.amount, currency)?,
        currency,
        expires_in_ms: body.expires_in_ms,
    });
    match run_one(&state, space_of(&request), command).await {
        Ok(_) => Ok(HttpResponse::Created().json(json!({"id": body.id, "status": "active"}))),
        Err(code) => Err(ApiError::of(code)),
    }
}

async fn release_hold(
    state: web::Data<ApiState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let hold = parse_id(&id, "hold id", HoldId::new)?;
    match run_one(&state, space_of(&request), Command::Release(hold)).await {
        Ok(_) => Ok(HttpResponse::Ok().json(json!({"id": id.as_str(), "status": "released"}))),
        Err(code) => Err(ApiError::of(code)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    to: String,
    #[serde(default)]
    amount: Option<String>,
}

async fn capture_hold(
    state: web::Data<ApiState>,
    request: HttpRequest,
    id: web::Path<String>,
    body: web::Json<CaptureBody>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let hold = parse_id(&id, "hold id", HoldId::new)?;
    let to = parse_id(&body.to, "account id", AccountId::new)?;
    let amount = match &body.amount {
        None => None,
        Some(text) => {
            // The hold's currency decides the scale.
            let currency = match run_one(
                &state,
                space_of(&request),
                Command::LookupHold(hold.clone()),
            )
            .await
            {
                Ok(Outcome::Hold(view)) => view.currency,
                Ok(_) => return Err(ApiError::of(ErrorCode::Internal)),
                Err(code) => return Err(ApiError::of(code)),
            };
            Some(parse_amount(text, currency)?)
        }
    };
    let command = Command::Capture(CaptureRequest { hold, to, amount });
    match run_one(&state, space_of(&request), command).await {
        Ok(_) => Ok(HttpResponse::Ok().json(json!({"id": id.as_str(), "status": "captured"}))),
        Err(code) => Err(ApiError::of(code)),
    }
}

async fn get_hold(
    state: web::Data<ApiState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> ApiResult {
    let _permit = admit(&state, &request, false, 1)?;
    let hold = parse_id(&id, "hold id", HoldId::new)?;
    match run_one(&state, space_of(&request), Command::LookupHold(hold)).await {
        Ok(Outcome::Hold(view)) => {
            let currency = view.currency;
            let mut body = json!({
                "id": view.id.as_str(),
                "account": view.account.as_str(),
                "amount": decimal(i128::from(view.amount.minor_units()), currency),
                "currency": currency.code(),
                "expires_at_ms": view.expires_at_ms,
            });
            match view.state {
                HoldState::Active => body["status"] = json!("active"),
                HoldState::Released { expired } => {
                    body["status"] = json!(if expired { "expired" } else { "released" })
                }
                HoldState::Captured { to, amount } => {
                    body["status"] = json!("captured");
                    body["captured_to"] = json!(to.as_str());
                    body["captured_amount"] =
                        json!(decimal(i128::from(amount.minor_units()), currency));
                }
            }
            Ok(HttpResponse::Ok().json(body))
        }
        Ok(_) => Err(ApiError::of(ErrorCode::Internal)),
        Err(code) => Err(ApiError::of(code)),
    }
}

async fn admin_table(state: web::Data<ApiState>, request: HttpRequest) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    // The store's current table, not the last poll's.
    if let Err(error) = state.routing.refresh_current().await {
        tracing::warn!(%error, "admin table: cannot refresh");
    }
    let table = state.routing.table();
    let counts = table.slot_counts();
    // Runs of consecutive slots with one owner.
    let mut runs = Vec::new();
    let mut start = 0usize;
    for slot in 1..=table.slots.len() {
        let same = slot < table.slots.len()
            && table.slots[slot].as_ref().map(|o| &o.dc)
                == table.slots[start].as_ref().map(|o| &o.dc);
        if !same {
            runs.push(json!({
                "first": start,
                "last": slot - 1,
                "dc": table.slots[start].as_ref().map(|o| o.dc.as_str()),
            }));
            start = slot;
        }
    }
    Ok(HttpResponse::Ok().json(json!({
        "version": table.version,
        "slots_by_dc": counts.iter().map(|(dc, n)| (dc.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "runs": runs,
        "whitelist": table.users.iter().map(|(user, owner)| json!({
            "user": user.as_str(), "dc": owner.dc.as_str(), "epoch": owner.epoch,
        })).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_lists_exactly_the_served_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn decimals_render_exactly() {
        let usd = Currency::from_code("USD").unwrap();
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(decimal(1_250, usd), "12.50");
        assert_eq!(decimal(-5, usd), "-0.05");
        assert_eq!(decimal(0, usd), "0.00");
        assert_eq!(decimal(7, jpy), "7");
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn admin_history(
    state: web::Data<ApiState>,
    request: HttpRequest,
    query: web::Query<HistoryQuery>,
) -> ApiResult {
    let _permit = admit(&state, &request, true, 1)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 10_000 {
        return Err(ApiError::new(
            ErrorCode::InvalidLimit,
            "limit must be 1..=10000",
        ));
    }
    let changes = cells::ownership::history(
        state.routing.store().as_ref(),
        query.from.unwrap_or(1).max(1),
        limit,
    )
    .await
    .map_err(|_| ApiError::of(ErrorCode::Unavailable))?;
    let changes: Vec<Value> = changes.iter().map(crate::admin::change_json).collect();
    Ok(HttpResponse::Ok().json(json!({ "changes": changes })))
}
