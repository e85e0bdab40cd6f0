//! The DC client's thread-own connections (`wire::local_io`): a thread that opted in gets
//! a connection of its own and its calls work before it is up (on the shared one), while it
//! is up, and after the client is dropped nothing is left serving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use cells::ids::{DcId, TransferId};
use cells::keys::Keyspace;
use cells::ledger::{Command, CommandResult, ErrorCode};
use cells::store::{BoxFuture, KeyValue};
use wire::dc_client::{DcClient, DcClientOptions};
use wire::dc_protocol::NodeStatus;
use wire::dc_server::{serve, DcHandler, DcServerOptions};

/// A DC node stand-in that answers every command `unknown_transfer` and counts batches.
struct Counting {
    batches: AtomicU64,
}

impl DcHandler for Counting {
    fn execute(
        &self,
        _space: Keyspace,
        commands: Vec<Command>,
    ) -> BoxFuture<'static, Result<Vec<CommandResult>, ErrorCode>> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let results = commands
            .iter()
            .map(|_| Err(ErrorCode::UnknownTransfer))
            .collect();
        Box::pin(std::future::ready(Ok(results)))
    }

    fn credits(&self, _space: Keyspace, _legs: Vec<KeyValue>) {}

    fn status(&self) -> NodeStatus {
        NodeStatus {
            dc: DcId::new("dc-t").expect("valid id"),
            incarnation: 1,
            table_version: 1,
            owned_slots: 0,
            active_accounts: 0,
        }
    }

    fn freeze(&self, _first: u16, _last: u16, _max_ms: u32) -> BoxFuture<'static, (bool, u64)> {
        Box::pin(std::future::ready((true, 0)))
    }

    fn thaw(&self, _first: u16, _last: u16) -> BoxFuture<'static, u64> {
        Box::pin(std::future::ready(1))
    }

    fn reload(&self) -> BoxFuture<'static, u64> {
        Box::pin(std::future::ready(1))
    }
}

fn lookup(n: u64) -> Vec<Command> {
    vec![Command::LookupTransfer(
        TransferId::new(&format!("t-{n}")).expect("valid id"),
    )]
}

#[test]
fn an_opted_in_thread_calls_on_its_own_connection() {
    let handler = Arc::new(Counting {
        batches: AtomicU64::new(0),
    });
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = server_runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind loopback");
    let addr = listener.local_addr().expect("address").to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served: Arc<dyn DcHandler> = handler.clone();
    let server = server_runtime.spawn(serve(served, listener, DcServerOptions::default(), async {
        let _ = stopped.await;
    }));

    let client = Arc::new(DcClient::connect(&addr, DcClientOptions::default()).expect("client"));
    assert!(client.wait_connected(Duration::from_secs(10)));
    assert!(!client.own_connection_up(), "this thread did not opt in");
    let on_thread = Arc::clone(&client);
    common::on_opted_in_thread(move || async move {
        let client = on_thread;
        // Served on the shared connection while the own one comes up.
        let first = client.execute(Keyspace::Real, lookup(0)).await;
        assert_eq!(
            first.expect("answered"),
            vec![Err(ErrorCode::UnknownTransfer)]
        );
        common::until_own_connection_up(|| client.own_connection_up()).await;
        for n in 1..=100 {
            let answer = client.execute(Keyspace::Real, lookup(n)).await;
            assert_eq!(
                answer.expect("answered"),
                vec![Err(ErrorCode::UnknownTransfer)]
            );
        }
        assert_eq!(client.freeze(0, 0, 10).await.expect("freeze"), (true, 0));
        assert_eq!(client.status().await.expect("status").table_version, 1);
    });
    assert_eq!(handler.batches.load(Ordering::Relaxed), 101);
    // The shared connection still serves threads that did not opt in.
    let answer = futures::executor::block_on(client.execute(Keyspace::Real, lookup(101)));
    assert_eq!(
        answer.expect("answered"),
        vec![Err(ErrorCode::UnknownTransfer)]
    );
    drop(client);
    let _ = stop.send(());
    server_runtime
        .block_on(server)
        .expect("server task")
        .expect("server");
}
