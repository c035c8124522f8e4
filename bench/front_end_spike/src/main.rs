//! `front_end_spike serve --data-dir DIR [--host H] [--port P] [--service echo]`: serves `NodeService` with the
//! node identity of DIR (`node-cert.pem`, `node-key.pem`) and prints `{"port": P}` once listening; SIGTERM or
//! SIGINT stops it.
//! `front_end_spike load --port P [--host H] [--connections 4] [--concurrency 64] [--payload-size 256]
//! [--duration 5]`: the spike's own enqueue load generator against its own server; prints its figures as JSON.
//! `front_end_spike node-load --port P --accounts FILE [--host H] [--connections 4] [--concurrency 64]
//! [--payload-size 256] [--duration 5] [--consumer peekack|fetchwait|none] [--wait-ms 25000] [--drain-timeout 10]
//! [--workers N]`: load against the real node with the logged-in accounts of FILE (written by `bench/cores.py`),
//! pinned to the node's fingerprint, its connections spread evenly over the node's N processes when given;
//! prints progress events and then its figures as JSON lines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use front_end_spike::client::enqueue_load;
use front_end_spike::node_load::{node_load, Accounts, NodeLoad};
use front_end_spike::runner::{bind, serve_bound, Service};
use front_end_spike::server::WireStats;
use front_end_spike::tls::{server_config, BoxError};

fn options(args: &[String]) -> Result<HashMap<String, String>, BoxError> {
    let mut options = HashMap::new();
    let mut rest = args.iter();
    while let Some(name) = rest.next() {
        let key = name
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {name:?}"))?;
        let value = rest.next().ok_or_else(|| format!("{name} needs a value"))?;
        options.insert(key.to_string(), value.clone());
    }
    Ok(options)
}

fn get<T: std::str::FromStr>(
    options: &HashMap<String, String>,
    name: &str,
    default: &str,
) -> Result<T, BoxError> {
    let text = options.get(name).map_or(default, String::as_str);
    text.parse()
        .map_err(|_| format!("--{name}: cannot read {text:?}").into())
}

fn address(options: &HashMap<String, String>, default_port: &str) -> Result<SocketAddr, BoxError> {
    let host: String = get(options, "host", "127.0.0.1")?;
    let port: u16 = get(options, "port", default_port)?;
    Ok(SocketAddr::new(host.parse()?, port))
}

async fn serve(options: HashMap<String, String>) -> Result<(), BoxError> {
    let data_dir: PathBuf = options
        .get("data-dir")
        .ok_or("serve needs --data-dir DIR")?
        .into();
    let config = server_config(
        &std::fs::read(data_dir.join("node-cert.pem"))?,
        &std::fs::read(data_dir.join("node-key.pem"))?,
    )?;
    let service = match options.get("service").map_or("echo", String::as_str) {
        "echo" => Service::Echo,
        other => return Err(format!("--service: unknown {other:?} (echo)").into()),
    };
    let endpoint = bind(config, address(&options, "0")?)?;
    println!(
        "{{\"port\": {}, \"pid\": {}}}",
        endpoint.local_addr()?.port(),
        std::process::id()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stats = Arc::new(WireStats::default());
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve_bound(endpoint, service, stop, stats.clone()).await;
    // What the connections cost on the wire, for whoever measures (spike.py keeps the server's stderr).
    eprintln!("{}", stats.json());
    Ok(())
}

async fn load(options: HashMap<String, String>) -> Result<(), BoxError> {
    let figures = enqueue_load(
        address(&options, "")?,
        get(&options, "connections", "4")?,
        get(&options, "concurrency", "64")?,
        get(&options, "payload-size", "256")?,
        Duration::from_secs_f64(get(&options, "duration", "5")?),
    )
    .await?;
    println!(
        "{{\"calls\": {}, \"errors\": {}, \"seconds\": {:.3}, \"calls_per_s\": {:.1}}}",
        figures.calls,
        figures.errors,
        figures.seconds,
        figures.calls as f64 / figures.seconds
    );
    Ok(())
}

async fn load_node(options: HashMap<String, String>) -> Result<(), BoxError> {
    let accounts_path: PathBuf = options
        .get("accounts")
        .ok_or("node-load needs --accounts FILE")?
        .into();
    let load = NodeLoad {
        addr: address(&options, "")?,
        accounts: Accounts::parse(&std::fs::read_to_string(&accounts_path)?)?,
        connections: get(&options, "connections", "4")?,
        concurrency: get(&options, "concurrency", "64")?,
        payload_size: get(&options, "payload-size", "256")?,
        duration: Duration::from_secs_f64(get(&options, "duration", "5")?),
        consumer: get(&options, "consumer", "peekack")?,
        wait_ms: get(&options, "wait-ms", "25000")?,
        drain_timeout: Duration::from_secs_f64(get(&options, "drain-timeout", "10")?),
        spread_over: match get::<usize>(&options, "workers", "0")? {
            0 => None,
            workers => Some(workers),
        },
    };
    let figures = node_load(&load).await?;
    println!("{}", figures.json());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = (|| -> Result<(), BoxError> {
        let (command, rest) = args
            .split_first()
            .ok_or("usage: front_end_spike serve|load|node-load [--option value]...")?;
        let options = options(rest)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        match command.as_str() {
            "serve" => local.block_on(&runtime, serve(options)),
            "load" => local.block_on(&runtime, load(options)),
            "node-load" => local.block_on(&runtime, load_node(options)),
            other => Err(format!("unknown command {other:?} (serve, load, node-load)").into()),
        }
    })();
    if let Err(error) = result {
        eprintln!("front_end_spike: {error}");
        std::process::exit(2);
    }
}
