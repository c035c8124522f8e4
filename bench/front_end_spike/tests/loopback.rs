//! Calls answered over loopback QUIC: the Rust client against the front end, served in Rust and handed off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use front_end_spike::client::{client_endpoint, connect, enqueue_request, pinned_endpoint};
use front_end_spike::handoff::{Answer, Handoff};
use front_end_spike::runner::{start, Running, Service};
use front_end_spike::tls::{parse_fingerprint, server_config};

const CERT: &[u8] = include_bytes!("fixtures/node-cert.pem");
const KEY: &[u8] = include_bytes!("fixtures/node-key.pem");

fn loopback(service: Service) -> Running {
    let config = server_config(CERT, KEY).expect("the test identity loads");
    start(config, SocketAddr::from(([127, 0, 0, 1], 0)), service).expect("the front end starts")
}

fn run_local<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

#[test]
fn echo_answers_health_and_enqueue() {
    let server = loopback(Service::Echo);
    run_local(async {
        let endpoint = client_endpoint().unwrap();
        let node = connect(&endpoint, server.addr).await.unwrap();
        let health = node.service.health_request().send().promise.await.unwrap();
        assert_eq!(
            health
                .get()
                .unwrap()
                .get_status()
                .unwrap()
                .to_str()
                .unwrap(),
            "ok"
        );
        for expected in 1..=3u64 {
            let answer = enqueue_request(&node.service, b"hello", 1)
                .send()
                .promise
                .await
                .unwrap();
            assert_eq!(answer.get().unwrap().get_seq(), expected);
        }
        // Methods the spike does not serve fail as unimplemented rather than hanging.
        let error = node
            .service
            .fetch_request()
            .send()
            .promise
            .await
            .err()
            .expect("fetch is not served");
        assert_eq!(error.kind, capnp::ErrorKind::Unimplemented);
        node.connection.close(0u32.into(), b"done");
        // The connection's datagrams are added once the server sees it end.
        for _ in 0..200 {
            if server.stats.totals().0 == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (connections, received, sent) = server.stats.totals();
        assert_eq!(connections, 1);
        // The handshake and five calls at least: the datagrams are counted, not made up.
        assert!(
            received >= 6 && sent >= 6,
            "{received} received, {sent} sent"
        );
    });
}

#[test]
fn the_connection_presents_the_node_certificate_and_alpn() {
    let server = loopback(Service::Echo);
    run_local(async {
        let endpoint = client_endpoint().unwrap();
        let node = connect(&endpoint, server.addr).await.unwrap();
        let identity = node.connection.peer_identity().expect("a certificate");
        let certificates = identity
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .unwrap();
        let expected = rustls::pki_types::pem::PemObject::from_pem_slice(CERT).unwrap();
        let expected: rustls::pki_types::CertificateDer<'static> = expected;
        assert_eq!(certificates[0], expected);
        let handshake = node.connection.handshake_data().unwrap();
        let handshake = handshake
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap();
        assert_eq!(handshake.protocol.as_deref(), Some(&b"capnp"[..]));
    });
}

/// The test identity's fingerprint as the Python client computes it (`common/fingerprint.py`, SHA-256 of the
/// certificate's SubjectPublicKeyInfo).
const FIXTURE_FINGERPRINT: &str =
    "c3e41e15cd9b3847b9c5027287a4dc3a57352029d375b4d07d3758c52528a396";

#[test]
fn a_pinned_client_connects_to_its_node_and_refuses_another_key() {
    let server = loopback(Service::Echo);
    run_local(async {
        let pin = parse_fingerprint(FIXTURE_FINGERPRINT).unwrap();
        let endpoint = pinned_endpoint(server.addr, pin).unwrap();
        let node = connect(&endpoint, server.addr).await.unwrap();
        let health = node.service.health_request().send().promise.await.unwrap();
        assert_eq!(health.get().unwrap().get_status().unwrap(), "ok");
        node.connection.close(0u32.into(), b"done");

        let mut other = pin;
        other[31] ^= 1;
        let endpoint = pinned_endpoint(server.addr, other).unwrap();
        let error = connect(&endpoint, server.addr)
            .await
            .err()
            .expect("another key is refused");
        assert!(error.to_string().contains("pinned fingerprint"), "{error}");
    });
}

#[test]
fn each_pinned_endpoint_has_a_source_port_of_its_own() {
    // The node's workers share a port by the client's address: one socket would reach one worker.
    let pin = parse_fingerprint(FIXTURE_FINGERPRINT).unwrap();
    let server = SocketAddr::from(([127, 0, 0, 1], 9));
    run_local(async {
        let first = pinned_endpoint(server, pin).unwrap();
        let second = pinned_endpoint(server, pin).unwrap();
        assert_ne!(
            first.local_addr().unwrap().port(),
            second.local_addr().unwrap().port()
        );
    });
}

/// A consumer on its own thread, as the Python loop would be: seq = payload length, version 2 refused.
fn consume(handoff: Arc<Handoff>, calls: usize) -> std::thread::JoinHandle<Vec<usize>> {
    std::thread::spawn(move || {
        let mut batches = Vec::new();
        let mut answered = 0;
        while answered < calls {
            let taken = handoff.take();
            if taken.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            batches.push(taken.len());
            answered += taken.len();
            handoff.answer(taken.into_iter().map(|call| {
                let answer = if call.version == 1 {
                    Answer::Seq(call.payload.len() as u64)
                } else {
                    Answer::Error(format!(
                        "invalid_argument: version must be 1, got {}",
                        call.version
                    ))
                };
                (call.id, answer)
            }));
        }
        batches
    })
}

#[test]
fn enqueue_is_handed_off_in_batches_and_answered_by_id() {
    let handoff = Handoff::new().unwrap();
    let server = loopback(Service::Handoff(handoff.clone()));
    let calls = 64;
    let consumer = consume(handoff, calls + 1);
    run_local(async {
        let endpoint = client_endpoint().unwrap();
        let node = connect(&endpoint, server.addr).await.unwrap();
        let sizes: Vec<usize> = (0..calls).collect();
        let answers = futures::future::join_all(sizes.iter().map(|&size| {
            let payload = vec![0u8; size];
            let request = enqueue_request(&node.service, &payload, 1);
            async move {
                request
                    .send()
                    .promise
                    .await
                    .unwrap()
                    .get()
                    .unwrap()
                    .get_seq()
            }
        }))
        .await;
        // Each call got its own answer back, whatever batch it travelled in.
        assert_eq!(
            answers,
            sizes.iter().map(|&size| size as u64).collect::<Vec<_>>()
        );
        let error = enqueue_request(&node.service, b"x", 2)
            .send()
            .promise
            .await
            .err()
            .expect("refused");
        assert!(
            error
                .extra
                .contains("invalid_argument: version must be 1, got 2"),
            "{error}"
        );
    });
    let batches = consumer.join().unwrap();
    assert_eq!(batches.iter().sum::<usize>(), calls + 1);
    // 64 calls sent at once do not arrive one by one.
    assert!(batches.len() < calls, "{batches:?}");
}

#[test]
fn a_closed_handoff_fails_waiting_calls() {
    let handoff = Handoff::new().unwrap();
    let server = loopback(Service::Handoff(handoff.clone()));
    run_local(async {
        let endpoint = client_endpoint().unwrap();
        let node = connect(&endpoint, server.addr).await.unwrap();
        let pending = enqueue_request(&node.service, b"x", 1).send().promise;
        let closer = handoff.clone();
        tokio::task::spawn_local(async move {
            while closer.take().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            closer.close();
        });
        let error = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("no hang")
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .contains("unavailable: the front end is shutting down"),
            "{error}"
        );
    });
}
