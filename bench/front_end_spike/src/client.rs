//! A Rust client of `NodeService` over the same wire (quinn + capnp-rpc): the spike's tests and its own load
//! generator, which measures the server without a Python client's CPU in the way.

use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use futures::io::{BufReader, BufWriter};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::node_capnp::node_service;
use crate::tls::{client_config, BoxError};

/// A connection's `NodeService` capability; the connection lives as long as the RPC system does.
pub struct NodeConnection {
    pub service: node_service::Client,
    pub connection: quinn::Connection,
}

/// A client endpoint on an ephemeral loopback port that accepts any server certificate.
pub fn client_endpoint() -> Result<quinn::Endpoint, BoxError> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(client_config(None)?);
    Ok(endpoint)
}

/// A client endpoint for `server` on a UDP port of its own, requiring the node's key fingerprint `pin`. One
/// endpoint per connection: the node's workers (`--workers N`, SO_REUSEPORT) share a port by the client's
/// address, so connections from one socket would all reach one worker.
pub fn pinned_endpoint(server: SocketAddr, pin: [u8; 32]) -> Result<quinn::Endpoint, BoxError> {
    let local = if server.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(client_config(Some(pin))?);
    Ok(endpoint)
}

/// Opens a connection, its RPC stream and the bootstrap capability. Call inside a `LocalSet`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<NodeConnection, BoxError> {
    let connection = endpoint.connect(addr, "localhost")?.await?;
    let (send, recv) = connection.open_bi().await?;
    let network = twoparty::VatNetwork::new(
        BufReader::new(recv.compat()),
        BufWriter::new(send.compat_write()),
        Side::Client,
        capnp::message::ReaderOptions::new(),
    );
    let mut system = RpcSystem::new(Box::new(network), None);
    let service: node_service::Client = system.bootstrap(Side::Server);
    tokio::task::spawn_local(system);
    Ok(NodeConnection {
        service,
        connection,
    })
}

/// The node's wire version and bearer-token auth version (`common/schema.py`).
pub const PROTOCOL_VERSION: u16 = 1;
pub const AUTH_VERSION: u16 = 1;

/// A call's bearer token.
pub fn set_auth(mut auth: crate::node_capnp::auth::Builder<'_>, token: &[u8]) {
    auth.set_version(AUTH_VERSION);
    auth.set_access_token(token);
}

/// Fills an enqueue request into `recipient`'s default inbox, authenticated by `token`.
pub fn enqueue_to(
    service: &node_service::Client,
    recipient: &[u8],
    payload: &[u8],
    version: u16,
    token: &[u8],
) -> capnp::capability::Request<
    node_service::enqueue_params::Owned,
    node_service::enqueue_results::Owned,
> {
    let mut request = service.enqueue_request();
    let mut params = request.get();
    params.set_recipient_key(recipient);
    params.set_payload(payload);
    params.set_channel_id(&[]);
    params.set_version(version);
    set_auth(params.init_auth(), token);
    request
}

/// Fills an enqueue request as the bench's producers do against the spike's servers: a fixed 32-byte recipient,
/// the payload, `version`, a fixed 32-byte token.
pub fn enqueue_request(
    service: &node_service::Client,
    payload: &[u8],
    version: u16,
) -> capnp::capability::Request<
    node_service::enqueue_params::Owned,
    node_service::enqueue_results::Owned,
> {
    enqueue_to(service, &[7u8; 32], payload, version, &[9u8; 32])
}

#[derive(Debug, Clone, Copy)]
pub struct LoadFigures {
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// `concurrency` call loops spread over `connections` connections, each calling `enqueue` back to back until
/// `duration` has passed. Call inside a `LocalSet`.
pub async fn enqueue_load(
    addr: SocketAddr,
    connections: usize,
    concurrency: usize,
    payload_size: usize,
    duration: Duration,
) -> Result<LoadFigures, BoxError> {
    let endpoint = client_endpoint()?;
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        opened.push(connect(&endpoint, addr).await?);
    }
    let payload = Rc::new(vec![0xa5u8; payload_size]);
    let calls = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let started = Instant::now();
    let deadline = started + duration;
    let loops = (0..concurrency).map(|index| {
        let service = opened[index % opened.len()].service.clone();
        let (payload, calls, errors) = (payload.clone(), calls.clone(), errors.clone());
        async move {
            while Instant::now() < deadline {
                match enqueue_request(&service, &payload, 1).send().promise.await {
                    Ok(_) => calls.set(calls.get() + 1),
                    Err(_) => errors.set(errors.get() + 1),
                }
            }
        }
    });
    futures::future::join_all(loops).await;
    let seconds = started.elapsed().as_secs_f64();
    for connection in &opened {
        connection.connection.close(0u32.into(), b"done");
    }
    // Let the closes reach the server, so that it ends (and counts) the connections now.
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(LoadFigures {
        calls: calls.get(),
        errors: errors.get(),
        seconds,
    })
}
