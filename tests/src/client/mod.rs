//! `SioClient`: a minimal Socket.IO v5 (Engine.IO v4) client over one websocket, for tests and
//! the load generator: connect with auth, emit, emit with ack, buffered events, disconnects.
//!
//! One reader task per client decodes frames, answers engine pings and feeds a bounded channel;
//! one writer task owns the sink. Everything the test waits for is bounded by a timeout.

mod io;
mod options;
pub mod packet;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

pub use options::{ConnectError, ConnectErrorKind, ConnectOptions};
use packet::{encode_binary_event, encode_event};

/// How many decoded packets may wait for the test before the reader stops reading.
const INBOX: usize = 8192;

enum Incoming {
    Event { name: String, args: Vec<Value> },
    Ack { id: u64, args: Vec<Value> },
    Disconnected(String),
}

/// A connected Socket.IO client on namespace `/`.
pub struct SioClient {
    sid: String,
    out: mpsc::UnboundedSender<Message>,
    inbox: mpsc::Receiver<Incoming>,
    events: VecDeque<(String, Vec<Value>)>,
    acks: HashMap<u64, Vec<Value>>,
    next_id: u64,
    disconnected: Option<String>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl SioClient {
    /// Connects to `base_url` (`http://host:port`) with `auth: {token}` when `token` is given,
    /// or a bare `40` when not.
    pub async fn connect(base_url: &str, token: Option<&str>) -> Result<SioClient, ConnectError> {
        let opts = match token {
            Some(t) => ConnectOptions::token(t),
            None => ConnectOptions::default(),
        };
        SioClient::connect_with(base_url, opts).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(
        base_url: &str,
        opts: ConnectOptions,
    ) -> Result<SioClient, ConnectError> {
        let limit = opts.timeout;
        match tokio::time::timeout(limit, io::handshake(base_url, opts)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError {
                kind: ConnectErrorKind::Timeout,
                message: format!("no connect answer within {limit:?}"),
                data: None,
            }),
        }
    }

    /// The Socket.IO socket id from the `40{"sid"}` answer.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Sends `42["event", data]`.
    pub fn emit(&self, event: &str, data: Value) {
        self.emit_args(event, &[data]);
    }

    /// Sends `42["event", ...args]` (any number of arguments, none included).
    pub fn emit_args(&self, event: &str, args: &[Value]) {
        self.send_raw(&encode_event(event, args, None));
    }

    /// Sends `message:send {roomName, content}` and returns its ack (5 s at most).
    #[track_caller]
    pub fn send_message(&mut self, room: &str, content: &str) -> impl Future<Output = Value> + '_ {
        self.emit_ack(
            "message:send",
            serde_json::json!({"roomName": room, "content": content}),
            Duration::from_secs(5),
        )
    }

    /// Sends `42<id>["event", data]` and returns the ack's first argument. Panics (fails the
    /// test) when no ack arrives within `timeout`.
    #[track_caller]
    pub fn emit_ack(
        &mut self,
        event: &str,
        data: Value,
        timeout: Duration,
    ) -> impl Future<Output = Value> + '_ {
        let caller = std::panic::Location::caller();
        let event = event.to_string();
        async move {
            match self.emit_args_ack(&event, &[data], timeout).await {
                Some(args) => args.into_iter().next().unwrap_or(Value::Null),
                None => panic!(
                    "no ack for {event} within {timeout:?} (disconnected: {:?}) at {caller}",
                    self.disconnected
                ),
            }
        }
    }

    /// Sends `42<id>["event", ...args]` and waits for `43<id>[...]`; all ack arguments, or
    /// `None` on timeout or disconnect.
    pub async fn emit_args_ack(
        &mut self,
        event: &str,
        args: &[Value],
        timeout: Duration,
    ) -> Option<Vec<Value>> {
        let id = self.next_ack_id();
        self.send_raw(&encode_event(event, args, Some(id)));
        self.wait_ack(id, timeout).await
    }

    /// Sends a binary event `45<n>-<id>[...]` followed by `attachments` as binary frames, and
    /// waits for its ack.
    pub async fn emit_binary_ack(
        &mut self,
        event: &str,
        args: &[Value],
        attachments: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Option<Vec<Value>> {
        let id = self.next_ack_id();
        self.send_raw(&encode_binary_event(
            event,
            args,
            attachments.len(),
            Some(id),
        ));
        for a in attachments {
            self.send_raw_binary(a);
        }
        self.wait_ack(id, timeout).await
    }

    /// Reserves the next ack id (for hand-built packets sent with [`SioClient::send_raw`]).
    pub fn next_ack_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Waits for the ack with this id; `None` on timeout or disconnect.
    pub async fn wait_ack(&mut self, id: u64, timeout: Duration) -> Option<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(args) = self.acks.remove(&id) {
                return Some(args);
            }
            if !self.pump(deadline).await {
                return self.acks.remove(&id);
            }
        }
    }

    /// Sends one websocket text frame as is (an engine packet: `42[...]`, `2`, garbage...).
    pub fn send_raw(&self, frame: &str) {
        // A send on a closed client is a no-op: the test sees it as a missing answer.
        let _ = self.out.send(Message::text(frame.to_string()));
    }

    /// Sends one websocket binary frame as is.
    pub fn send_raw_binary(&self, bytes: Vec<u8>) {
        let _ = self.out.send(Message::binary(bytes));
    }

    /// The first argument of the next `name` event (buffered ones first); `None` on timeout or
    /// disconnect. Other events are kept for later calls.
    pub async fn next_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        self.next_event_where(name, timeout, |_| true).await
    }

    /// Like [`SioClient::next_event`], for the first `name` event whose first argument matches.
    pub async fn next_event_where(
        &mut self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.find(name, &pred) {
                let (_, args) = self.events.remove(pos)?;
                return Some(args.into_iter().next().unwrap_or(Value::Null));
            }
            if !self.pump(deadline).await {
                return None;
            }
        }
    }

    /// The next event of any name in arrival order (buffered ones first): `(name, args)`.
    pub async fn next_any(&mut self, timeout: Duration) -> Option<(String, Vec<Value>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if !self.pump(deadline).await {
                return None;
            }
        }
    }

    /// A barrier on this socket: sends `ping` and waits (5 s at most) for its `pong`. The
    /// server handles a socket's events in order and queues what it sends a socket in order,
    /// so once the pong is here, everything queued for this socket before it (the answers to
    /// earlier events, and broadcasts emitted before the events that caused them were acked)
    /// has arrived: an "expect nothing" check after it needs no waiting window.
    #[track_caller]
    pub fn sync(&mut self) -> impl Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            self.emit_args("ping", &[]);
            if self
                .next_event("pong", Duration::from_secs(5))
                .await
                .is_none()
            {
                panic!("no pong within 5 s at {caller}");
            }
        }
    }

    /// Panics (fails the test) when a `name` event is buffered or arrives within `wait`.
    #[track_caller]
    pub fn expect_none(&mut self, name: &str, wait: Duration) -> impl Future<Output = ()> + '_ {
        self.expect_none_where(name, wait, |_| true)
    }

    /// Panics when a `name` event whose first argument matches is buffered or arrives within
    /// `wait`.
    #[track_caller]
    pub fn expect_none_where<'a, P: Fn(&Value) -> bool + 'a>(
        &'a mut self,
        name: &str,
        wait: Duration,
        pred: P,
    ) -> impl Future<Output = ()> + 'a {
        let caller = std::panic::Location::caller();
        let name = name.to_string();
        async move {
            let deadline = Instant::now() + wait;
            loop {
                if let Some(pos) = self.find(&name, &pred) {
                    panic!(
                        "unexpected {name} event {:?} at {caller}",
                        self.events.get(pos).map(|(_, a)| a)
                    );
                }
                if !self.pump(deadline).await {
                    return;
                }
            }
        }
    }

    /// Every `name` event (first arguments) buffered or arriving within `wait`.
    pub async fn collect(&mut self, name: &str, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        while self.pump(deadline).await {}
        let mut found = Vec::new();
        self.events.retain(|(n, args)| {
            if n == name {
                found.push(args.first().cloned().unwrap_or(Value::Null));
                false
            } else {
                true
            }
        });
        found
    }

    /// Drops every buffered event.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// Waits until the connection ends; the reason (`io server disconnect` for a `41` packet,
    /// `transport close` for a closed websocket), or `None` if still connected after `timeout`.
    pub async fn wait_disconnect(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while self.disconnected.is_none() && self.pump(deadline).await {}
        self.disconnected.clone()
    }

    /// The disconnect reason seen so far (without waiting).
    pub fn disconnect_reason(&self) -> Option<&str> {
        self.disconnected.as_deref()
    }

    /// Sends `41` and a websocket close frame, then waits briefly for the writer to flush.
    pub async fn close(mut self) {
        self.send_raw("41");
        let _ = self.out.send(Message::Close(None));
        if let Some(writer) = self.writer.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        }
        self.reader.abort();
    }

    fn find(&self, name: &str, pred: &impl Fn(&Value) -> bool) -> Option<usize> {
        self.events
            .iter()
            .position(|(n, args)| n == name && pred(args.first().unwrap_or(&Value::Null)))
    }

    /// Receives one decoded packet into the buffers; `false` on timeout or when the reader is
    /// gone.
    async fn pump(&mut self, deadline: Instant) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(deadline, self.inbox.recv()).await {
            Err(_) => false,
            Ok(None) => {
                if self.disconnected.is_none() {
                    self.disconnected = Some("transport close".into());
                }
                false
            }
            Ok(Some(Incoming::Event { name, args })) => {
                self.events.push_back((name, args));
                true
            }
            Ok(Some(Incoming::Ack { id, args })) => {
                self.acks.insert(id, args);
                true
            }
            Ok(Some(Incoming::Disconnected(reason))) => {
                self.disconnected = Some(reason);
                true
            }
        }
    }
}

impl Drop for SioClient {
    fn drop(&mut self) {
        // Dropping `out` ends the writer, which closes the websocket.
        self.reader.abort();
    }
}
