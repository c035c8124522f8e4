//! The load generator against the real node (`qpc-server run [--workers N]`): logged-in bench accounts enqueue
//! into each other's default inboxes, as `qpc-bench enqueue` does, and (optionally) each account drains its
//! inbox with peekWait + ack or fetchWait, at the CPU cost of a Rust client instead of a Python one.
//!
//! The accounts come from a file the Python side writes (`bench/cores.py`: registered and logged in with the
//! bench's own helpers), one line each:
//!
//! ```text
//! fingerprint <node key fingerprint, hex>
//! bot <session token, hex> <identity key, hex>
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::client::{
    connect, enqueue_to, pinned_endpoint, set_auth, NodeConnection, PROTOCOL_VERSION,
};
use crate::node_capnp::node_service;
use crate::tls::{decode_hex, parse_fingerprint, BoxError};

/// Distinct error texts kept per error code (the rest are only counted).
const ERROR_TEXTS_KEPT: usize = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bot {
    pub token: Vec<u8>,
    pub key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub fingerprint: [u8; 32],
    pub bots: Vec<Bot>,
}

impl Accounts {
    pub fn parse(text: &str) -> Result<Accounts, BoxError> {
        let mut fingerprint = None;
        let mut bots = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [] => {}
                [comment, ..] if comment.starts_with('#') => {}
                ["fingerprint", hex] => fingerprint = Some(parse_fingerprint(hex)?),
                ["bot", token, key] => bots.push(Bot {
                    token: decode_hex(token)?,
                    key: decode_hex(key)?,
                }),
                _ => {
                    return Err(
                        format!("accounts line {}: cannot read {line:?}", number + 1).into(),
                    )
                }
            }
        }
        let fingerprint = fingerprint.ok_or("accounts: no `fingerprint` line")?;
        if bots.is_empty() {
            return Err("accounts: no `bot` line".into());
        }
        Ok(Accounts { fingerprint, bots })
    }
}

/// How each account drains its inbox while the producers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// peekWait, then ack what came (at least once: what `qpc-bench`'s consumers do by default).
    PeekAck,
    /// fetchWait (at most once: one call per batch).
    FetchWait,
    /// Nobody drains: enqueues only (inboxes grow; the node's per-sender share limit ends the run early).
    None,
}

impl std::str::FromStr for Consumer {
    type Err = BoxError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "peekack" => Ok(Consumer::PeekAck),
            "fetchwait" => Ok(Consumer::FetchWait),
            "none" => Ok(Consumer::None),
            other => Err(format!("--consumer: {other:?} is not peekack, fetchwait or none").into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeLoad {
    pub addr: SocketAddr,
    pub accounts: Accounts,
    pub connections: usize,
    pub concurrency: usize,
    pub payload_size: usize,
    pub duration: Duration,
    pub consumer: Consumer,
    pub wait_ms: u64,
    pub drain_timeout: Duration,
    /// The node's process count (`--workers`): spread the connections evenly over them. None: as the kernel does.
    pub spread_over: Option<usize>,
}

/// Errors by code (`invalid_argument`, `resource_exhausted`, ... or `disconnected`), with the first text of each.
#[derive(Debug, Default)]
pub struct ErrorCounts {
    pub by_code: BTreeMap<String, (u64, Vec<String>)>,
}

impl ErrorCounts {
    pub fn add(&mut self, error: &capnp::Error) {
        let text = error.to_string();
        let entry = self
            .by_code
            .entry(error_code(&text).to_string())
            .or_default();
        entry.0 += 1;
        if entry.1.len() < ERROR_TEXTS_KEPT {
            entry.1.push(text.chars().take(200).collect());
        }
    }

    pub fn total(&self) -> u64 {
        self.by_code.values().map(|(count, _)| count).sum()
    }
}

/// The node's error code in a Cap'n Proto error's text ("remote exception: invalid_argument: ..." ->
/// "invalid_argument"); "other" when there is none.
pub fn error_code(text: &str) -> &str {
    let reason = text
        .rsplit_once("remote exception: ")
        .map_or(text, |(_, rest)| rest);
    match reason.split_once(": ") {
        Some((code, _))
            if !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
        {
            code
        }
        _ => "other",
    }
}

/// The value at quantile `q` (0..=1) of sorted `values` (nearest rank); 0 when empty.
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Default)]
pub struct NodeLoadFigures {
    pub enqueues: u64,
    pub produce_seconds: f64,
    /// Each acknowledged enqueue's round trip, microseconds, sorted.
    pub call_us: Vec<u32>,
    pub errors: ErrorCounts,
    pub deliveries: u64,
    /// From the first enqueue to the last delivery.
    pub delivery_seconds: f64,
    pub consumer_errors: ErrorCounts,
    /// The node process (`nodeStatus.processId`) serving each producer and consumer connection.
    pub producers_by_process: BTreeMap<u32, u32>,
    pub consumers_by_process: BTreeMap<u32, u32>,
}

impl NodeLoadFigures {
    pub fn json(&self) -> String {
        let per_s = |count: u64, seconds: f64| {
            if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            }
        };
        let ms = |q: f64| f64::from(quantile(&self.call_us, q)) / 1000.0;
        format!(
            "{{\"enqueues\": {}, \"produce_seconds\": {:.3}, \"enqueues_per_s\": {:.1}, \
             \"call_ms\": {{\"p50\": {:.2}, \"p90\": {:.2}, \"p99\": {:.2}, \"max\": {:.2}}}, \
             \"errors\": {}, \"deliveries\": {}, \"deliveries_per_s\": {:.1}, \"consumer_errors\": {}, \
             \"producers_by_process\": {}, \"consumers_by_process\": {}}}",
            self.enqueues,
            self.produce_seconds,
            per_s(self.enqueues, self.produce_seconds),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(1.0),
            errors_json(&self.errors),
            self.deliveries,
            per_s(self.deliveries, self.delivery_seconds),
            errors_json(&self.consumer_errors),
            counts_json(&self.producers_by_process),
            counts_json(&self.consumers_by_process),
        )
    }
}

fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn errors_json(errors: &ErrorCounts) -> String {
    let items: Vec<String> = errors
        .by_code
        .iter()
        .map(|(code, (count, texts))| {
            let texts: Vec<String> = texts.iter().map(|text| json_string(text)).collect();
            format!(
                "{}: {{\"count\": {count}, \"first\": [{}]}}",
                json_string(code),
                texts.join(", ")
            )
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn counts_json(counts: &BTreeMap<u32, u32>) -> String {
    let items: Vec<String> = counts
        .iter()
        .map(|(pid, count)| format!("\"{pid}\": {count}"))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// This process's (running, runnable but waiting for a CPU) seconds so far, summed over its threads
/// (/proc/self/task/*/schedstat; zero where there is no /proc).
pub fn scheduled_seconds() -> (f64, f64) {
    let (mut running, mut waiting) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            let mut fields = text
                .split_whitespace()
                .map(|field| field.parse::<u64>().unwrap_or(0));
            running += fields.next().unwrap_or(0);
            waiting += fields.next().unwrap_or(0);
        }
    }
    (running as f64 / 1e9, waiting as f64 / 1e9)
}

/// A progress line on stdout, with this process's CPU so far: the measuring side takes its readings at these,
/// and reads the load generator's own CPU here because the process may have ended when the line is read.
fn event(name: &str) {
    let (running, waiting) = scheduled_seconds();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{{\"event\": \"{name}\", \"running_s\": {running:.6}, \"waiting_s\": {waiting:.6}}}"
    );
    let _ = out.flush();
}

async fn process_id(connection: &NodeConnection) -> Result<u32, capnp::Error> {
    let answer = connection
        .service
        .node_status_request()
        .send()
        .promise
        .await?;
    Ok(answer.get()?.get_status()?.get_process_id())
}

/// Connections opened per connection kept, at most, while spreading them evenly over the node's processes.
const SPREAD_TRIES_PER_CONNECTION: usize = 32;

/// Opens `count` connections, each on its own endpoint (its own source port), noting which node process serves
/// each. With `spread_over` = N, connections are opened until each of N processes serves an even share (the
/// kernel's hash spreads a few flows unevenly: 16 over two workers came out 5/11), closing those past a share.
async fn open_connections(
    addr: SocketAddr,
    pin: [u8; 32],
    count: usize,
    spread_over: Option<usize>,
    by_process: &mut BTreeMap<u32, u32>,
) -> Result<Vec<NodeConnection>, BoxError> {
    let share = spread_over.map(|processes| count.div_ceil(processes.max(1)));
    let mut opened = Vec::with_capacity(count);
    let mut tries = 0;
    while opened.len() < count {
        tries += 1;
        if tries > count * SPREAD_TRIES_PER_CONNECTION {
            return Err(format!(
                "{count} connections did not spread evenly over {} node processes in {} tries \
                 (served so far: {by_process:?})",
                spread_over.unwrap_or(1),
                tries - 1
            )
            .into());
        }
        let endpoint = pinned_endpoint(addr, pin)?;
        let connection = connect(&endpoint, addr).await?;
        let served = by_process
            .entry(process_id(&connection).await?)
            .or_default();
        if share.is_some_and(|share| *served as usize >= share) {
            connection
                .connection
                .close(0u32.into(), b"spreading the load");
            continue;
        }
        *served += 1;
        opened.push(connection);
    }
    Ok(opened)
}

async fn enqueue(
    service: &node_service::Client,
    sender: &Bot,
    recipient: &[u8],
    payload: &[u8],
) -> Result<(), capnp::Error> {
    enqueue_to(service, recipient, payload, PROTOCOL_VERSION, &sender.token)
        .send()
        .promise
        .await?;
    Ok(())
}

/// The seqs a fetchWait or peekWait of `bot`'s default inbox returns (the two take the same parameters, generated
/// as two types).
macro_rules! wait_for_seqs {
    ($request:expr, $bot:expr, $wait_ms:expr) => {{
        let mut request = $request;
        let mut params = request.get();
        params.set_recipient_key(&$bot.key);
        params.set_channel_id(&[]);
        params.set_version(PROTOCOL_VERSION);
        params.set_timeout_ms($wait_ms);
        set_auth(params.init_auth(), &$bot.token);
        let answer = request.send().promise.await?;
        let seqs: Vec<u64> = answer
            .get()?
            .get_payloads()?
            .iter()
            .map(|envelope| envelope.get_seq())
            .collect();
        seqs
    }};
}

/// One drain step of `bot`'s default inbox: the envelopes that came (acked, for peekWait) and the last seq acked.
async fn drain_once(
    service: &node_service::Client,
    bot: &Bot,
    consumer: Consumer,
    wait_ms: u64,
    acked: u64,
) -> Result<(u64, u64), capnp::Error> {
    let seqs = if consumer == Consumer::FetchWait {
        wait_for_seqs!(service.fetch_wait_request(), bot, wait_ms)
    } else {
        let mut seqs = wait_for_seqs!(service.peek_wait_request(), bot, wait_ms);
        seqs.retain(|seq| *seq > acked);
        seqs
    };
    let Some(&last) = seqs.last() else {
        return Ok((0, acked));
    };
    if consumer == Consumer::PeekAck {
        let mut request = service.ack_request();
        let mut params = request.get();
        params.set_recipient_key(&bot.key);
        params.set_channel_id(&[]);
        params.set_version(PROTOCOL_VERSION);
        params.set_seq_up_to(last);
        set_auth(params.init_auth(), &bot.token);
        request.send().promise.await?;
    }
    Ok((seqs.len() as u64, last))
}

/// Runs the load: consumers first (parked before anything is sent), then `concurrency` enqueue loops over
/// `connections` producer connections until `duration` has passed, then waits for the deliveries (up to
/// `drain_timeout`). The load runs over the first min(accounts, connections) bots, so that every inbox sent to
/// is drained: producer connection j enqueues as bot j into the inbox of bot j+1 (both modulo that ring);
/// consumer i drains bot i's inbox. Prints `{"event": "producing"}` and `{"event": "produced"}` on stdout around the timed part.
/// Call inside a `LocalSet`.
pub async fn node_load(load: &NodeLoad) -> Result<NodeLoadFigures, BoxError> {
    let bots = Rc::new(load.accounts.bots.clone());
    let pin = load.accounts.fingerprint;
    let mut figures = NodeLoadFigures::default();

    let ring = bots.len().min(load.connections.max(1));
    let consumer_count = if load.consumer == Consumer::None {
        0
    } else {
        ring
    };
    let consumers = open_connections(
        load.addr,
        pin,
        consumer_count,
        load.spread_over,
        &mut figures.consumers_by_process,
    )
    .await?;
    let producers = open_connections(
        load.addr,
        pin,
        load.connections.max(1),
        load.spread_over,
        &mut figures.producers_by_process,
    )
    .await?;

    let delivered = Rc::new(Cell::new(0u64));
    let last_delivery = Rc::new(Cell::new(None::<Instant>));
    let consumer_errors = Rc::new(RefCell::new(ErrorCounts::default()));
    let mut consumer_tasks = Vec::new();
    for (index, connection) in consumers.iter().enumerate() {
        let service = connection.service.clone();
        let (bots, delivered, last_delivery, errors) = (
            bots.clone(),
            delivered.clone(),
            last_delivery.clone(),
            consumer_errors.clone(),
        );
        let (consumer, wait_ms) = (load.consumer, load.wait_ms);
        consumer_tasks.push(tokio::task::spawn_local(async move {
            let bot = &bots[index];
            let mut acked = 0u64;
            loop {
                match drain_once(&service, bot, consumer, wait_ms, acked).await {
                    Ok((count, last)) => {
                        acked = last;
                        if count > 0 {
                            delivered.set(delivered.get() + count);
                            last_delivery.set(Some(Instant::now()));
                        }
                    }
                    Err(error) => {
                        errors.borrow_mut().add(&error);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // Let the first waits reach the node and park before anything is sent.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let payload = Rc::new(vec![0xa5u8; load.payload_size]);
    let enqueued = Rc::new(Cell::new(0u64));
    let call_us = Rc::new(RefCell::new(Vec::<u32>::new()));
    let errors = Rc::new(RefCell::new(ErrorCounts::default()));
    event("producing");
    let started = Instant::now();
    let deadline = started + load.duration;
    let loops = (0..load.concurrency.max(1)).map(|index| {
        let slot = index % producers.len();
        let service = producers[slot].service.clone();
        let sender = bots[slot % ring].clone();
        let recipient = bots[(slot + 1) % ring].key.clone();
        let (payload, enqueued, call_us, errors) = (
            payload.clone(),
            enqueued.clone(),
            call_us.clone(),
            errors.clone(),
        );
        async move {
            while Instant::now() < deadline {
                let sent = Instant::now();
                match enqueue(&service, &sender, &recipient, &payload).await {
                    Ok(()) => {
                        let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                        call_us.borrow_mut().push(micros);
                        enqueued.set(enqueued.get() + 1);
                    }
                    Err(error) => errors.borrow_mut().add(&error),
                }
            }
        }
    });
    futures::future::join_all(loops).await;
    figures.produce_seconds = started.elapsed().as_secs_f64();
    event("produced");

    if load.consumer != Consumer::None {
        let drain_deadline = Instant::now() + load.drain_timeout;
        while delivered.get() < enqueued.get() && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for task in &consumer_tasks {
        task.abort();
    }
    for connection in producers.iter().chain(consumers.iter()) {
        connection.connection.close(0u32.into(), b"done");
    }

    figures.enqueues = enqueued.get();
    figures.call_us = call_us.take();
    figures.call_us.sort_unstable();
    figures.errors = errors.take();
    figures.deliveries = delivered.get();
    figures.delivery_seconds = last_delivery.get().map_or(0.0, |at| {
        at.saturating_duration_since(started).as_secs_f64()
    });
    figures.consumer_errors = consumer_errors.take();
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_are_read_from_the_file_format() {
        let text = format!(
            "# accounts\nfingerprint {}\n\nbot 0a0b {}\nbot FF00 {}\n",
            "AB:".repeat(31) + "ab",
            "11".repeat(32),
            "22".repeat(32)
        );
        let accounts = Accounts::parse(&text).unwrap();
        assert_eq!(accounts.fingerprint, [0xab; 32]);
        assert_eq!(
            accounts.bots,
            vec![
                Bot {
                    token: vec![0x0a, 0x0b],
                    key: vec![0x11; 32]
                },
                Bot {
                    token: vec![0xff, 0x00],
                    key: vec![0x22; 32]
                },
            ]
        );
    }

    #[test]
    fn bad_accounts_files_are_refused_with_the_line() {
        let fingerprint = format!("fingerprint {}\n", "00".repeat(32));
        for (text, expected) in [
            (String::new(), "no `fingerprint` line"),
            (fingerprint.clone(), "no `bot` line"),
            (format!("{fingerprint}bot 0a\n"), "line 2"),
            (format!("{fingerprint}bot zz 00\n"), "not hex"),
            ("fingerprint 00ff\n".to_string(), "64 hex digits"),
        ] {
            let error = Accounts::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn error_codes_come_from_the_node_reason() {
        assert_eq!(
            error_code("remote exception: invalid_argument: payload too large"),
            "invalid_argument"
        );
        assert_eq!(
            error_code("Failed: remote exception: resource_exhausted: share"),
            "resource_exhausted"
        );
        assert_eq!(error_code("Disconnected: connection lost"), "other");
        assert_eq!(error_code("no reason at all"), "other");
    }

    #[test]
    fn this_process_has_run() {
        let (running, _) = scheduled_seconds();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(20) {}
        let (again, waiting) = scheduled_seconds();
        assert!(again - running >= 0.01, "{running} -> {again}");
        assert!(waiting >= 0.0);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), 50);
        assert_eq!(quantile(&values, 0.99), 99);
        assert_eq!(quantile(&values, 1.0), 100);
        assert_eq!(quantile(&values, 0.0), 1);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn figures_print_as_json_with_quoted_error_texts() {
        let mut figures = NodeLoadFigures {
            enqueues: 10,
            produce_seconds: 2.0,
            call_us: vec![1000, 2000, 3000],
            ..NodeLoadFigures::default()
        };
        figures
            .errors
            .by_code
            .insert("other".into(), (1, vec!["a \"quoted\"\ntext".into()]));
        figures.producers_by_process.insert(42, 2);
        let json = figures.json();
        assert!(json.contains("\"enqueues_per_s\": 5.0"), "{json}");
        assert!(json.contains("\"p50\": 2.00"), "{json}");
        assert!(json.contains("\"a \\\"quoted\\\"\\u000atext\""), "{json}");
        assert!(
            json.contains("\"producers_by_process\": {\"42\": 2}"),
            "{json}"
        );
    }
}
