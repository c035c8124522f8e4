//! Decoded `enqueue` calls handed to another thread (the Python event loop) in batches, granian-style: the RPC
//! thread queues each call and wakes the consumer through a socket pair only when the queue goes from empty to
//! non-empty; the consumer takes everything queued at once and answers by call id, in batches too.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::node_capnp::node_service;

/// One `enqueue` call, its parameters copied out of the RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueCall {
    pub id: u64,
    pub recipient_key: Vec<u8>,
    pub payload: Vec<u8>,
    pub channel_id: Vec<u8>,
    pub version: u16,
    /// `auth.version`, `auth.accessToken`, `auth.deviceId`; `None` when the caller sent no auth.
    pub auth: Option<(u16, Vec<u8>, Vec<u8>)>,
    pub idempotency_key: Vec<u8>,
}

/// The consumer's answer to one call: its seq, or the error text the caller gets (`invalid_argument: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Seq(u64),
    Error(String),
}

#[derive(Default)]
struct State {
    calls: Vec<EnqueueCall>,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    next_id: u64,
    closed: bool,
}

pub struct Handoff {
    state: Mutex<State>,
    wake_writer: UnixStream,
    wake_reader: UnixStream,
}

impl Handoff {
    pub fn new() -> io::Result<Arc<Self>> {
        let (wake_writer, wake_reader) = UnixStream::pair()?;
        wake_writer.set_nonblocking(true)?;
        wake_reader.set_nonblocking(true)?;
        Ok(Arc::new(Self {
            state: Mutex::default(),
            wake_writer,
            wake_reader,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent: carry on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The socket the consumer waits on (readable when calls are queued).
    pub fn wake_socket(&self) -> &UnixStream {
        &self.wake_reader
    }

    /// Queues a call (its `id` is assigned here); the answer arrives on the receiver. A closed hand-off drops
    /// the sender at once, so the caller sees the receiver fail.
    pub fn submit(&self, mut call: EnqueueCall) -> oneshot::Receiver<Answer> {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.lock();
        if state.closed {
            return receiver;
        }
        state.next_id += 1;
        call.id = state.next_id;
        state.waiting.insert(call.id, sender);
        state.calls.push(call);
        let wake = state.calls.len() == 1;
        drop(state);
        if wake {
            // A full socket buffer already means "wake up": nothing to do then.
            let _ = (&self.wake_writer).write(&[1]);
        }
        receiver
    }

    /// Everything queued so far, oldest first; clears the wake-up first so that a call queued meanwhile wakes
    /// the consumer again rather than being missed.
    pub fn take(&self) -> Vec<EnqueueCall> {
        let mut sink = [0u8; 256];
        while matches!((&self.wake_reader).read(&mut sink), Ok(n) if n > 0) {}
        std::mem::take(&mut self.lock().calls)
    }

    /// Answers calls by id; unknown ids (already answered, or the caller went away) are ignored.
    pub fn answer(&self, answers: impl IntoIterator<Item = (u64, Answer)>) {
        let mut state = self.lock();
        let senders: Vec<_> = answers
            .into_iter()
            .filter_map(|(id, answer)| state.waiting.remove(&id).map(|sender| (sender, answer)))
            .collect();
        drop(state);
        for (sender, answer) in senders {
            let _ = sender.send(answer);
        }
    }

    /// Fails every waiting call and refuses new ones.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.calls.clear();
        state.waiting.clear();
    }
}

/// `NodeService` whose `enqueue` goes through the hand-off; `health` is answered here.
pub struct HandoffNode {
    handoff: Arc<Handoff>,
}

impl HandoffNode {
    pub fn new(handoff: Arc<Handoff>) -> Self {
        Self { handoff }
    }
}

impl node_service::Server for HandoffNode {
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
        let auth = if params.has_auth() {
            let auth = params.get_auth()?;
            Some((
                auth.get_version(),
                auth.get_access_token()?.to_vec(),
                auth.get_device_id()?.to_vec(),
            ))
        } else {
            None
        };
        let call = EnqueueCall {
            id: 0,
            recipient_key: params.get_recipient_key()?.to_vec(),
            payload: params.get_payload()?.to_vec(),
            channel_id: params.get_channel_id()?.to_vec(),
            version: params.get_version(),
            auth,
            idempotency_key: params.get_idempotency_key()?.to_vec(),
        };
        let answer = self.handoff.submit(call);
        match answer.await {
            Ok(Answer::Seq(seq)) => {
                results.get().set_seq(seq);
                Ok(())
            }
            Ok(Answer::Error(text)) => Err(capnp::Error::failed(text)),
            Err(_) => Err(capnp::Error::disconnected(
                "unavailable: the front end is shutting down".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> EnqueueCall {
        EnqueueCall {
            id: 0,
            recipient_key: vec![1; 32],
            payload: b"p".to_vec(),
            channel_id: vec![],
            version: 1,
            auth: None,
            idempotency_key: vec![],
        }
    }

    /// The wake-up bytes waiting on the consumer's socket (read, so consumed).
    fn wakeups(handoff: &Handoff) -> usize {
        let mut bytes = [0u8; 16];
        (handoff.wake_socket()).read(&mut bytes).unwrap_or(0)
    }

    #[test]
    fn wakes_once_per_batch_and_take_clears_the_wakeup() {
        let handoff = Handoff::new().unwrap();
        assert_eq!(wakeups(&handoff), 0);
        let first = handoff.submit(call());
        let second = handoff.submit(call());
        let _third = handoff.submit(call());
        // take() clears the batch's wake-up.
        let taken = handoff.take();
        assert_eq!(
            taken.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(wakeups(&handoff), 0);
        handoff.answer([
            (2, Answer::Error("invalid_argument: no".into())),
            (1, Answer::Seq(7)),
            (99, Answer::Seq(0)),
        ]);
        assert_eq!(first.blocking_recv().unwrap(), Answer::Seq(7));
        assert_eq!(
            second.blocking_recv().unwrap(),
            Answer::Error("invalid_argument: no".into())
        );
        // A call queued after a take wakes the consumer again.
        let _fourth = handoff.submit(call());
        let _fifth = handoff.submit(call());
        assert_eq!(wakeups(&handoff), 1);
    }

    #[test]
    fn close_drops_waiting_and_new_calls() {
        let handoff = Handoff::new().unwrap();
        let waiting = handoff.submit(call());
        handoff.close();
        assert!(waiting.blocking_recv().is_err());
        assert!(handoff.submit(call()).blocking_recv().is_err());
        assert!(handoff.take().is_empty());
    }
}
