//! The RPC front end on a thread of its own (a current-thread tokio runtime and a `LocalSet`), so that another
//! thread (the Python event loop) can consume its hand-off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::handoff::{Handoff, HandoffNode};
use crate::node_capnp::node_service;
use crate::server::{serve, EchoNode, WireStats};
use crate::tls::BoxError;

/// What answers the calls.
#[derive(Clone)]
pub enum Service {
    /// `health` and `enqueue` answered in Rust with nothing behind them.
    Echo,
    /// `enqueue` handed to the consumer of this hand-off.
    Handoff(Arc<Handoff>),
}

impl Service {
    pub fn client(&self) -> node_service::Client {
        match self {
            Service::Echo => capnp_rpc::new_client(EchoNode::default()),
            Service::Handoff(handoff) => capnp_rpc::new_client(HandoffNode::new(handoff.clone())),
        }
    }
}

pub fn bind(config: quinn::ServerConfig, addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::server(config, addr)
}

/// Serves `service` on `endpoint` until `stop` resolves; then closes the endpoint and waits (briefly) for the
/// peers to learn it. Call inside a `LocalSet`.
pub async fn serve_bound<S>(
    endpoint: quinn::Endpoint,
    service: Service,
    stop: S,
    stats: Arc<WireStats>,
) where
    S: std::future::Future<Output = ()>,
{
    tokio::select! {
        () = serve(endpoint.clone(), move || service.client(), stats) => {}
        () = stop => {}
    }
    endpoint.close(0u32.into(), b"front end shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// The front end running on its own thread; stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub stats: Arc<WireStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub fn start(
    config: quinn::ServerConfig,
    addr: SocketAddr,
    service: Service,
) -> Result<Running, BoxError> {
    let (ready_sender, ready) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let (stop, stopped) = oneshot::channel::<()>();
    let stats = Arc::new(WireStats::default());
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("front-end-rpc".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_sender.send(Err(error.to_string()));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let endpoint = match bind(config, addr) {
                    Ok(endpoint) => endpoint,
                    Err(error) => {
                        let _ = ready_sender.send(Err(format!("binding {addr}: {error}")));
                        return;
                    }
                };
                let _ = ready_sender.send(endpoint.local_addr().map_err(|error| error.to_string()));
                let stop = async {
                    let _ = stopped.await;
                };
                serve_bound(endpoint, service, stop, thread_stats).await;
            });
        })?;
    let addr = ready
        .recv()
        .map_err(|_| "the front end thread ended before binding")??;
    Ok(Running {
        addr,
        stats,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl Running {
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
