//! `import front_end_spike`: the front end on its own thread, its decoded `enqueue` calls handed to Python.
//!
//! ```python
//! front = front_end_spike.FrontEnd(cert_pem, key_pem, "127.0.0.1", 0)
//! loop.add_reader(front.wake_fd(), on_calls)     # readable when calls are queued
//! calls = front.take_calls()   # [(id, recipient_key, payload, channel_id, version, auth, idempotency_key)]
//! front.answer([(id, seq), ...], [(id, "invalid_argument: ..."), ...])
//! front.close()
//! ```
//! `auth` is None or `(version, access_token, device_id)`.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::handoff::{Answer, Handoff};
use crate::runner::{start, Running, Service};
use crate::tls::server_config;

type PyAuth<'py> = Option<(u16, Bound<'py, PyBytes>, Bound<'py, PyBytes>)>;
type PyCall<'py> = (
    u64,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    Bound<'py, PyBytes>,
    u16,
    PyAuth<'py>,
    Bound<'py, PyBytes>,
);

#[pyclass(module = "front_end_spike")]
struct FrontEnd {
    handoff: Arc<Handoff>,
    running: Option<Running>,
    port: u16,
}

#[pymethods]
impl FrontEnd {
    #[new]
    fn new(
        py: Python<'_>,
        cert_pem: &[u8],
        key_pem: &[u8],
        host: &str,
        port: u16,
    ) -> PyResult<Self> {
        let config = server_config(cert_pem, key_pem)
            .map_err(|error| PyOSError::new_err(error.to_string()))?;
        let addr = format!("{host}:{port}")
            .parse()
            .map_err(|_| PyOSError::new_err("host must be an IP address"))?;
        let handoff = Handoff::new()?;
        let service = Service::Handoff(handoff.clone());
        let running = py
            .detach(|| start(config, addr, service).map_err(|error| error.to_string()))
            .map_err(PyOSError::new_err)?;
        let port = running.addr.port();
        Ok(Self {
            handoff,
            running: Some(running),
            port,
        })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.port
    }

    /// The file descriptor that is readable while calls are queued.
    fn wake_fd(&self) -> i32 {
        self.handoff.wake_socket().as_raw_fd()
    }

    /// Every call queued since the last take, oldest first.
    fn take_calls<'py>(&self, py: Python<'py>) -> Vec<PyCall<'py>> {
        let bytes = |data: &[u8]| PyBytes::new(py, data);
        self.handoff
            .take()
            .into_iter()
            .map(|call| {
                let auth = call
                    .auth
                    .map(|(version, token, device)| (version, bytes(&token), bytes(&device)));
                let payload = bytes(&call.payload);
                (
                    call.id,
                    bytes(&call.recipient_key),
                    payload,
                    bytes(&call.channel_id),
                    call.version,
                    auth,
                    bytes(&call.idempotency_key),
                )
            })
            .collect()
    }

    /// Answers calls: `seqs` succeeded with their seq, `errors` failed with their text.
    fn answer(&self, seqs: Vec<(u64, u64)>, errors: Vec<(u64, String)>) {
        let answers = seqs
            .into_iter()
            .map(|(id, seq)| (id, Answer::Seq(seq)))
            .chain(
                errors
                    .into_iter()
                    .map(|(id, text)| (id, Answer::Error(text))),
            );
        self.handoff.answer(answers);
    }

    /// (connections ended, datagrams received, datagrams sent) over the connections that have ended.
    fn wire_stats(&self) -> (u64, u64, u64) {
        self.running
            .as_ref()
            .map_or((0, 0, 0), |running| running.stats.totals())
    }

    /// Stops serving: waiting calls fail, the endpoint closes, the RPC thread ends.
    fn close(&mut self, py: Python<'_>) {
        self.handoff.close();
        if let Some(mut running) = self.running.take() {
            py.detach(move || running.stop());
        }
    }
}

#[pymodule]
fn front_end_spike(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FrontEnd>()
}
