//! The websocket side of [`super::SioClient`]: the handshake (engine open, namespace connect),
//! the writer task that owns the sink and the reader task that decodes frames and answers pings.

use std::collections::{HashMap, VecDeque};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::packet::{EnginePacket, SioPacket, decode_engine};
use super::{ConnectError, ConnectErrorKind, ConnectOptions, INBOX, Incoming, SioClient};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(base_url: &str) -> String {
    let rest = base_url
        .strip_prefix("http://")
        .or_else(|| base_url.strip_prefix("ws://"))
        .unwrap_or(base_url)
        .trim_end_matches('/');
    format!("ws://{rest}/socket.io/?EIO=4&transport=websocket")
}

pub(super) async fn handshake(
    base_url: &str,
    opts: ConnectOptions,
) -> Result<SioClient, ConnectError> {
    let mut req = ws_url(base_url)
        .into_client_request()
        .map_err(|e| ConnectError::transport(e.to_string()))?;
    for (k, v) in &opts.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ConnectError::transport(format!("header {k}: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| ConnectError::transport(format!("header {k}: {e}")))?;
        req.headers_mut().insert(name, value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) => {
                ConnectError::transport(format!("HTTP {}", resp.status()))
            }
            e => ConnectError::transport(e.to_string()),
        })?;
    let (mut sink, mut stream) = ws.split();
    match next_text(&mut stream).await? {
        EnginePacket::Open(_) => {}
        other => {
            return Err(ConnectError::transport(format!(
                "expected the engine open packet, got {other:?}"
            )));
        }
    }
    let connect = match &opts.auth {
        Some(auth) => format!("40{auth}"),
        None => "40".to_string(),
    };
    send(&mut sink, connect).await?;
    let sid = loop {
        match next_text(&mut stream).await? {
            EnginePacket::Ping(p) => send(&mut sink, format!("3{p}")).await?,
            EnginePacket::Message(Some(SioPacket::Connect(v))) => {
                break v
                    .get("sid")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
            }
            EnginePacket::Message(Some(SioPacket::ConnectError(v))) => {
                return Err(ConnectError {
                    kind: ConnectErrorKind::Refused,
                    message: v
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                    data: v.get("data").cloned(),
                });
            }
            EnginePacket::Close => {
                return Err(ConnectError::transport("engine closed during connect"));
            }
            _ => {}
        }
    };
    let (out, out_rx) = mpsc::unbounded_channel();
    let (in_tx, inbox) = mpsc::channel(INBOX);
    let writer = tokio::spawn(write_loop(sink, out_rx));
    let reader = tokio::spawn(read_loop(stream, out.clone(), in_tx));
    Ok(SioClient {
        sid,
        out,
        inbox,
        events: VecDeque::new(),
        acks: HashMap::new(),
        next_id: 0,
        disconnected: None,
        reader,
        writer: Some(writer),
    })
}

async fn send(sink: &mut SplitSink<Ws, Message>, text: String) -> Result<(), ConnectError> {
    sink.send(Message::text(text))
        .await
        .map_err(|e| ConnectError::transport(e.to_string()))
}

/// The next text frame during the handshake, decoded.
async fn next_text(stream: &mut SplitStream<Ws>) -> Result<EnginePacket, ConnectError> {
    loop {
        match stream.next().await {
            None => return Err(ConnectError::transport("websocket closed during connect")),
            Some(Err(e)) => return Err(ConnectError::transport(e.to_string())),
            Some(Ok(Message::Text(t))) => return Ok(decode_engine(&t)),
            Some(Ok(Message::Close(_))) => {
                return Err(ConnectError::transport("websocket closed during connect"));
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn write_loop(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(msg) = rx.recv().await {
        let is_close = matches!(msg, Message::Close(_));
        if sink.send(msg).await.is_err() || is_close {
            break;
        }
    }
    let _ = sink.close().await;
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    out: mpsc::UnboundedSender<Message>,
    inbox: mpsc::Sender<Incoming>,
) {
    let reason = loop {
        let frame = match stream.next().await {
            None => break "transport close".to_string(),
            Some(Err(e)) => break format!("transport error: {e}"),
            Some(Ok(Message::Close(_))) => break "transport close".to_string(),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
        };
        let incoming = match decode_engine(&frame) {
            EnginePacket::Ping(p) => {
                let _ = out.send(Message::text(format!("3{p}")));
                continue;
            }
            EnginePacket::Close => break "transport close".to_string(),
            EnginePacket::Message(Some(SioPacket::Disconnect)) => {
                break "io server disconnect".to_string();
            }
            EnginePacket::Message(Some(SioPacket::Event { name, args, .. })) => {
                Incoming::Event { name, args }
            }
            EnginePacket::Message(Some(SioPacket::Ack { id, args })) => Incoming::Ack { id, args },
            _ => continue,
        };
        if inbox.send(incoming).await.is_err() {
            return;
        }
    };
    let _ = inbox.send(Incoming::Disconnected(reason)).await;
}
