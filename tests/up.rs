//! `tessera up` end to end: the real binary starts the store, three DC nodes and the
//! router on free loopback ports; a client drives the HTTP API through its happy paths and
//! its error codes, a DC node is killed under the client's feet, and the deployment stops
//! cleanly on SIGTERM. Afterwards `tessera reconcile` must find the store clean, with every
//! acknowledged transfer present exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{pids_of, start_up, Up};
use drills::httpc;
use serde_json::{json, Value};

/// The customers' money, in cents.
fn customers_cents(up: &Up) -> i64 {
    (0..12)
        .map(|n| {
            let text = up.balance(&format!("c{n}"));
            let (units, cents) = text.split_once('.').unwrap();
            units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap()
        })
        .sum()
}

fn create(up: &Up, body: Value) -> (u16, Value) {
    up.call("POST", "/v1/accounts", Some(body))
}

#[test]
fn up_serves_the_api_survives_a_dc_kill_and_stops_cleanly() {
    let up = start_up();
    let mut acked = Vec::new();

    // Accounts: created, idempotent, conflicting.
    let bank = json!({"id": "bank", "user": "bank", "currency": "USD", "kind": "system"});
    assert_eq!(create(&up, bank.clone()).0, 201);
    let (status, body) = create(&up, bank);
    assert_eq!((status, body["status"].as_str()), (200, Some("exists")));
    let (status, body) = create(
        &up,
        json!({"id": "bank", "user": "bank", "currency": "EUR", "kind": "system"}),
    );
    assert_eq!(status, 409);
    assert_eq!(
        body["error"]["code"],
        "account_exists_with_different_fields"
    );
    for n in 0..12 {
        let (status, body) = create(
            &up,
            json!({"id": format!("c{n}"), "user": format!("user-{n}"), "currency": "USD"}),
        );
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(
        create(
            &up,
            json!({"id": "eur", "user": "user-e", "currency": "EUR"})
        )
        .0,
        201
    );

    // Funding and a payment.
    for n in 0..12 {
        let id = format!("fund-{n}");
        let (status, body) = up.pay(&id, "bank", &format!("c{n}"), "100.00");
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("accepted")),
            "{body}"
        );
        acked.push(id);
    }
    for n in 0..12 {
        up.wait_completed(&format!("fund-{n}"));
    }
    let (status, body) = up.pay("pay-1", "c0", "c1", "10.25");
    assert_eq!(status, 200, "{body}");
    acked.push("pay-1".into());
    // A retry with the same id returns the original outcome and moves nothing again.
    let (status, body) = up.pay("pay-1", "c0", "c1", "10.25");
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    let (status, body) = up.pay("pay-1", "c0", "c1", "10.26");
    assert_eq!(status, 409);
    assert_eq!(body["code"], "transfer_exists_with_different_fields");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = up.call("GET", "/v1/transfers/pay-1", None);
        assert_eq!(status, 200);
        if body["status"] == "completed" {
            assert_eq!(body["amount"], "10.25");
            break;
        }
        assert!(Instant::now() < deadline, "pay-1 never completed: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.balance("c0"), "89.75");
    assert_eq!(up.balance("c1"), "110.25");

    // Statement, paginated.
    let (status, page) = up.call("GET", "/v1/accounts/c1/postings?limit=1", None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["postings"][0]["amount"], "100.00");
    let cursor = page["next_cursor"].as_u64().expect("a next page");
    let (_, page) = up.call(
        "GET",
        &format!("/v1/accounts/c1/postings?limit=1&cursor={cursor}"),
        None,
    );
    assert_eq!(page["postings"][0]["amount"], "10.25");
    assert_eq!(page["postings"][0]["counterparty"], "c0");
    assert_eq!(
        up.call("GET", "/v1/accounts/c1/postings?limit=0", None).1["error"]["code"],
        "invalid_limit"
    );

    // A batch: one result per item, in order, each with its own code.
    let (status, body) = up.call(
        "POST",
        "/v1/transfers/batch",
        Some(json!({"transfers": [
            {"id": "b-1", "from": "c2", "to": "c3", "amount": "1.00", "currency": "USD"},
            {"id": "b-2", "from": "c2", "to": "c3", "amount": "1.005", "currency": "USD"},
            {"id": "b-3", "from": "c4", "to": "c5", "amount": "1000.00", "currency": "USD"},
            {"id": "b-4", "from": "c4", "to": "eur", "amount": "1.00", "currency": "USD"},
            {"id": "b-5", "from": "c4", "to": "nobody", "amount": "1.00", "currency": "USD"},
            {"id": "b-6", "from": "c6"},
        ]})),
    );
    assert_eq!(status, 200, "{body}");
    let codes: Vec<Value> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].clone())
        .collect();
    assert_eq!(
        codes,
        vec![
            Value::Null,
            json!("too_many_decimals"),
            json!("insufficient_funds"),
            json!("currency_mismatch"),
            json!("unknown_account"),
            json!("malformed_request"),
        ]
    );
    acked.push("b-1".into());

    // Holds: partial capture releases the rest; release; double release refused.
    let (status, body) = up.call(
        "POST",
        "/v1/holds",
        Some(json!({"id": "h-1", "account": "c7", "amount": "30.00", "currency": "USD", "expires_in_ms": 600000})),
    );
    assert_eq!(status, 201, "{body}");
    let (_, account) = up.call("GET", "/v1/accounts/c7", None);
    assert_eq!(
        (account["available"].as_str(), account["frozen"].as_str()),
        (Some("70.00"), Some("30.00"))
    );
    let (status, body) = up.call(
        "POST",
        "/v1/holds/h-1/capture",
        Some(json!({"to": "c8", "amount": "20.00"})),
    );
    assert_eq!(status, 200, "{body}");
    let (_, hold) = up.call("GET", "/v1/holds/h-1", None);
    assert_eq!(hold["status"], "captured");
    assert_eq!(hold["captured_amount"], "20.00");
    assert_eq!(
        up.call(
            "POST",
            "/v1/holds",
            Some(json!({"id": "h-2", "account": "c9", "amount": "5.00", "currency": "USD"}))
        )
        .0,
        201
    );
    assert_eq!(up.call("POST", "/v1/holds/h-2/release", None).0, 200);
    // A release is idempotent; releasing a captured hold is refused.
    assert_eq!(up.call("POST", "/v1/holds/h-2/release", None).0, 200);
    let (status, body) = up.call("POST", "/v1/holds/h-1/release", None);
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("hold_not_active"))
    );
    assert_eq!(
        up.call("POST", "/v1/holds/nope/release", None).1["error"]["code"],
        "unknown_hold"
    );
    assert_eq!(
        up.call(
            "POST",
            "/v1/holds",
            Some(json!({"id": "h-3", "account": "c9", "amount": "5.00", "currency": "USD", "expires_in_ms": 0}))
        )
        .1["error"]["code"],
        "invalid_expiry"
    );

    // A split hot account: spread over parts, read as one, debited beyond any one part.
    let (status, body) = create(
        &up,
        json!({"id": "hot", "user": "hot-user", "currency": "USD", "mode": "split:4"}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        create(
            &up,
            json!({"id": "hot2", "user": "h", "currency": "USD", "mode": "split:1"})
        )
        .1["error"]["code"],
        "invalid_mode"
    );
    for n in 0..8 {
        let (status, body) = up.pay(&format!("hot-in-{n}"), "bank", "hot", "5.00");
        assert_eq!(status, 200, "{body}");
        acked.push(format!("hot-in-{n}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.balance("hot") != "40.00" {
        assert!(Instant::now() < deadline, "hot never reached 40.00");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = up.pay("hot-out", "hot", "c11", "40.00");
    assert_eq!(status, 200, "the whole balance is usable: {body}");
    acked.push("hot-out".into());
    let (_, view) = up.call("GET", "/v1/accounts/hot", None);
    assert_eq!(
        (view["mode"].as_str(), view["balance"].as_str()),
        (Some("split:4"), Some("0.00"))
    );
    let (_, moved) = up.call("GET", "/v1/transfers/hot-out", None);
    assert_eq!(moved["from"], "hot");

    // Bad input: typed errors, nothing changes. First every credit leg so far must have
    // landed: the customers then hold exactly what the bank and the split account sent them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while customers_cents(&up) != 12 * 10_000 + 4_000 {
        assert!(Instant::now() < deadline, "credit legs never landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before: Vec<String> = (0..12).map(|n| up.balance(&format!("c{n}"))).collect();
    let bad = [
        (
            json!({"id": "x1", "from": "c0", "to": "c1", "amount": "0", "currency": "USD"}),
            400,
            "amount_not_positive",
        ),
        (
            json!({"id": "x2", "from": "c0", "to": "c1", "amount": "-1.00", "currency": "USD"}),
            400,
            "amount_not_positive",
        ),
        (
            json!({"id": "x3", "from": "c0", "to": "c1", "amount": "abc", "currency": "USD"}),
            400,
            "invalid_amount",
        ),
        (
            json!({"id": "x4", "from": "c0", "to": "c1", "amount": "1.00", "currency": "XXZ"}),
            400,
            "unknown_currency",
        ),
        (
            json!({"id": "bad id!", "from": "c0", "to": "c1", "amount": "1.00", "currency": "USD"}),
            400,
            "invalid_id",
        ),
        (
            json!({"id": "x5", "from": "c0", "to": "c0", "amount": "1.00", "currency": "USD"}),
            400,
            "same_account",
        ),
        (
            json!({"id": "x6", "from": "c0", "to": "c1", "amount": "99999999999999999999", "currency": "USD"}),
            400,
            "amount_overflow",
        ),
        (
            json!({"id": "x7", "from": "c0", "to": "c1", "amount": "1.00", "currency": "USD", "extra": 1}),
            400,
            "malformed_request",
        ),
        (
            json!({"id": "x8", "from": "ghost", "to": "c1", "amount": "1.00", "currency": "USD"}),
            404,
            "unknown_account",
        ),
    ];
    for (body, status, code) in bad {
        let (got, answer) = up.call("POST", "/v1/transfers", Some(body.clone()));
        let answer_code = answer["error"]["code"]
            .as_str()
            .or(answer["code"].as_str())
            .map(str::to_string);
        assert_eq!(
            (got, answer_code.as_deref()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let raw = |body: &[u8], token: Option<&str>| {
        httpc::request(
            up.http,
            "POST",
            "/v1/transfers",
            token,
            Some(body),
            Duration::from_secs(30),
        )
        .unwrap()
    };
    let response = raw(b"{\"id\": ", Some(&up.api_key));
    assert_eq!(
        (response.status, response.json()["error"]["code"].clone()),
        (400, json!("malformed_request"))
    );
    let huge = vec![b' '; 5 * 1024 * 1024];
    let response = raw(&huge, Some(&up.api_key));
    assert_eq!(response.status, 413);
    let too_many: Vec<Value> = (0..8_191)
        .map(|n| json!({"id": format!("o-{n}"), "from": "c0", "to": "c1", "amount": "0.01", "currency": "USD"}))
        .collect();
    let (status, body) = up.call(
        "POST",
        "/v1/transfers/batch",
        Some(json!({"transfers": too_many})),
    );
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &json!("batch_too_large"))
    );
    let after: Vec<String> = (0..12).map(|n| up.balance(&format!("c{n}"))).collect();
    assert_eq!(after, before, "bad input changed balances");

    // Authentication and authorization.
    let nobody = json!({"id": "z", "user": "z", "currency": "USD"});
    assert_eq!(
        up.call_as(None, "POST", "/v1/accounts", Some(nobody.clone()))
            .0,
        401
    );
    assert_eq!(
        up.call_as(Some("wrong"), "POST", "/v1/accounts", Some(nobody.clone()))
            .0,
        401
    );
    assert_eq!(
        up.call("GET", "/v1/accounts/z", None).0,
        404,
        "a refused request created nothing"
    );
    assert_eq!(up.call("GET", "/v1/admin/table", None).0, 403);
    let (status, table) = up.call_as(Some(&up.admin_token), "GET", "/v1/admin/table", None);
    assert_eq!(status, 200);
    assert_eq!(
        table["slots_by_dc"].as_object().unwrap().len(),
        3,
        "{table}"
    );

    // The documents.
    let (status, errors) = up.call_as(None, "GET", "/v1/errors", None);
    assert_eq!(status, 200);
    assert_eq!(
        errors["errors"].as_array().unwrap().len(),
        cells::ledger::ErrorCode::TABLE.len()
    );
    let (status, openapi) = up.call_as(None, "GET", "/v1/openapi.json", None);
    assert_eq!((status, &openapi["openapi"]), (200, &json!("3.0.3")));
    assert_eq!(
        up.call("GET", "/v1/nothing-here", None).1["error"]["code"],
        "not_found"
    );
    let metrics = httpc::request(
        up.http,
        "GET",
        "/metrics",
        None,
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("tessera_router"));
    // Time in the router per request, by method and route pattern (not by concrete path).
    assert!(
        text.contains(
            r#"tessera_router_request_seconds_count{method="POST",route="/v1/transfers"}"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"route="/v1/accounts/{id}""#), "{text}");
    assert_eq!(up.call_as(None, "GET", "/health", None).0, 200);
    // Every process serves its ops endpoints.
    for offset in 0..4u16 {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", up.ops_port + offset)
            .parse()
            .unwrap();
        for path in ["/health", "/ready", "/metrics"] {
            let response =
                httpc::request(addr, "GET", path, None, None, Duration::from_secs(5)).unwrap();
            assert_eq!(response.status, 200, "{addr}{path}");
        }
        let metrics =
            httpc::request(addr, "GET", "/metrics", None, None, Duration::from_secs(5)).unwrap();
        assert!(
            String::from_utf8_lossy(&metrics.body).contains("tessera_"),
            "{addr}: no tessera metrics"
        );
    }

    // kill -9 of a DC node under a client: payments keep being accepted (takeover or
    // restart), each exactly once.
    let victim = up.dc_pid("dc-b");
    let mut paid = 0u64;
    for round in 0..60 {
        if round == 10 {
            common::kill9(&victim);
        }
        let from = round % 12;
        let to = (round + 5) % 12;
        let id = format!("k-{round}");
        let (status, body) = up.pay(&id, &format!("c{from}"), &format!("c{to}"), "0.01");
        assert_eq!(status, 200, "{id}: {body}");
        acked.push(id);
        paid += 1;
    }
    assert_eq!(paid, 60);
    // Every credit leg lands; the money adds up; nothing twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = up.call("GET", "/v1/transfers/k-59", None);
        if body["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "k-59 never completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Customers only paid each other (the capture too) plus the 40.00 that went through
    // the split account into c11: once every leg has landed (those of the killed DC's
    // payers through the new owner's outbox rescan), their sum is what was sent to them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let total = customers_cents(&up);
        if total == 12 * 10_000 + 4_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "customers hold {total} cents, not 124000: a credit leg never landed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = up.reconcile(&acked);
    assert_eq!(report["clean"], true);

    // SIGTERM stops every process.
    let store_port = up.store_port;
    drop(up);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_of(store_port).is_empty() {
        assert!(
            Instant::now() < deadline,
            "children left running: {:?}",
            pids_of(store_port)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
