//! The accept loop: every QUIC connection carries one client-opened bidirectional stream, on which a two-party
//! Cap'n Proto RPC system serves `NodeService`. Runs on one thread (a tokio current-thread runtime and a
//! `LocalSet`: capnp-rpc's objects are `Rc`-based), like the Python node's one event loop.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use futures::io::{BufReader, BufWriter};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::node_capnp::node_service;

/// The largest message the node reads (`NodeConfig.max_message_bytes` is far below this); words of 8 bytes.
const TRAVERSAL_LIMIT_WORDS: usize = 64 * 1024 * 1024 / 8;
/// Read and write buffers per stream: a message's segment table and segments go out in one stream write, and
/// many small messages are read with one stream read.
const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// What the served connections cost on the wire, summed when each one ends (readable from any thread).
#[derive(Debug, Default)]
pub struct WireStats {
    connections: AtomicU64,
    datagrams_received: AtomicU64,
    datagrams_sent: AtomicU64,
}

impl WireStats {
    fn add(&self, stats: &quinn::ConnectionStats) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.datagrams_received
            .fetch_add(stats.udp_rx.datagrams, Ordering::Relaxed);
        self.datagrams_sent
            .fetch_add(stats.udp_tx.datagrams, Ordering::Relaxed);
    }

    /// (connections ended, datagrams received, datagrams sent) so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.connections.load(Ordering::Relaxed),
            self.datagrams_received.load(Ordering::Relaxed),
            self.datagrams_sent.load(Ordering::Relaxed),
        )
    }

    pub fn json(&self) -> String {
        let (connections, received, sent) = self.totals();
        format!("{{\"connections\": {connections}, \"datagrams_received\": {received}, \"datagrams_sent\": {sent}}}")
    }
}

/// Serves `make_service()` (one object per connection, as the node makes one `NodeServiceImpl` per session) on
/// every connection `endpoint` accepts, until the endpoint is closed.
pub async fn serve<F>(endpoint: quinn::Endpoint, make_service: F, stats: Arc<WireStats>)
where
    F: Fn() -> node_service::Client + 'static,
{
    let make_service = Rc::new(make_service);
    while let Some(incoming) = endpoint.accept().await {
        let make_service = make_service.clone();
        let stats = stats.clone();
        tokio::task::spawn_local(async move {
            if let Ok(connection) = incoming.await {
                serve_connection(&connection, make_service()).await;
                stats.add(&connection.stats());
            }
        });
    }
}

async fn serve_connection(connection: &quinn::Connection, service: node_service::Client) {
    // The first stream the client opens is the RPC stream; the transport parameters allow no other.
    let Ok((send, recv)) = connection.accept_bi().await else {
        return;
    };
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(TRAVERSAL_LIMIT_WORDS));
    let network = twoparty::VatNetwork::new(
        BufReader::with_capacity(STREAM_BUFFER_BYTES, recv.compat()),
        BufWriter::with_capacity(STREAM_BUFFER_BYTES, send.compat_write()),
        Side::Server,
        options,
    );
    let system = RpcSystem::new(Box::new(network), Some(service.client));
    // The RPC session is the connection's only purpose: once it ends (either side), the connection goes too.
    let _ = system.await;
    connection.close(0u32.into(), b"");
}

/// `NodeService` with nothing behind it: `health` says "ok", `enqueue` reads its parameters and returns the next
/// sequence number. Every other method is unimplemented (the generated defaults).
#[derive(Default)]
pub struct EchoNode {
    seq: Cell<u64>,
}

impl node_service::Server for EchoNode {
    async fn health(
        self: Rc<Self>,
        _params: node_service::HealthParams,
        mut results: node_service::HealthResults,
    ) -> Result<(), capnp::Error> {
        results.get().set_status("ok");
        Ok(())
    }

    async fn enqueue(
        self: Rc<Self>,
        params: node_service::EnqueueParams,
        mut results: node_service::EnqueueResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        // Touch what a real handler reads, so that the echo pays for decoding as the node would.
        let _ = (
            params.get_recipient_key()?,
            params.get_payload()?,
            params.get_auth()?.get_access_token()?,
        );
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        results.get().set_seq(seq);
        Ok(())
    }
}
