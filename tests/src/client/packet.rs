//! Engine.IO v4 / Socket.IO v5 text packet encoding and decoding (namespace `/` only).

use serde_json::Value;

/// A decoded Socket.IO packet (the part after the engine `4` message type).
#[derive(Debug, Clone, PartialEq)]
pub enum SioPacket {
    /// `0{...}`: namespace connect accepted (payload has `sid`).
    Connect(Value),
    /// `1`: the server disconnected this socket from the namespace.
    Disconnect,
    /// `2[name, ...args]` or `5` (binary event, attachments are dropped).
    Event {
        /// Event name.
        name: String,
        /// Arguments after the name.
        args: Vec<Value>,
        /// Ack id when the server asks for an ack.
        id: Option<u64>,
    },
    /// `3<id>[...args]` or `6` (binary ack).
    Ack {
        /// The id this answers.
        id: u64,
        /// Ack arguments.
        args: Vec<Value>,
    },
    /// `4{message, data?}`: namespace connect refused.
    ConnectError(Value),
}

/// A decoded Engine.IO text frame.
#[derive(Debug, Clone, PartialEq)]
pub enum EnginePacket {
    /// `0{...}` handshake.
    Open(Value),
    /// `1` close.
    Close,
    /// `2` ping (payload, e.g. `probe`).
    Ping(String),
    /// `3` pong.
    Pong(String),
    /// `4...` message; the Socket.IO packet, or `None` when it did not decode.
    Message(Option<SioPacket>),
    /// `5` upgrade, `6` noop or anything unknown.
    Other(String),
}

/// Decodes one engine text frame.
pub fn decode_engine(frame: &str) -> EnginePacket {
    let mut chars = frame.chars();
    let kind = chars.next();
    let rest = chars.as_str();
    match kind {
        Some('0') => EnginePacket::Open(serde_json::from_str(rest).unwrap_or(Value::Null)),
        Some('1') => EnginePacket::Close,
        Some('2') => EnginePacket::Ping(rest.to_string()),
        Some('3') => EnginePacket::Pong(rest.to_string()),
        Some('4') => EnginePacket::Message(decode_sio(rest)),
        _ => EnginePacket::Other(frame.to_string()),
    }
}

/// Decodes a Socket.IO packet (without the engine `4`). `None` when malformed.
pub fn decode_sio(s: &str) -> Option<SioPacket> {
    let mut chars = s.chars();
    let kind = chars.next()?;
    let mut rest = chars.as_str();
    if kind == '5' || kind == '6' {
        // `<attachments>-` prefix.
        let dash = rest.find('-')?;
        rest = &rest[dash + 1..];
    }
    if rest.starts_with('/') {
        // A namespace other than "/" is written as "/nsp,"; this client only speaks "/".
        let comma = rest.find(',')?;
        rest = &rest[comma + 1..];
    }
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let id = if digits > 0 {
        rest[..digits].parse::<u64>().ok()
    } else {
        None
    };
    rest = &rest[digits..];
    let payload: Option<Value> = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).ok()?)
    };
    match kind {
        '0' => Some(SioPacket::Connect(payload.unwrap_or(Value::Null))),
        '1' => Some(SioPacket::Disconnect),
        '2' | '5' => {
            let mut arr = match payload? {
                Value::Array(a) => a,
                _ => return None,
            };
            if arr.is_empty() {
                return None;
            }
            let name = match arr.remove(0) {
                Value::String(n) => n,
                _ => return None,
            };
            Some(SioPacket::Event {
                name,
                args: arr,
                id,
            })
        }
        '3' | '6' => {
            let args = match payload? {
                Value::Array(a) => a,
                _ => return None,
            };
            Some(SioPacket::Ack { id: id?, args })
        }
        '4' => Some(SioPacket::ConnectError(payload.unwrap_or(Value::Null))),
        _ => None,
    }
}

/// `42[name, ...args]` or `42<id>[name, ...args]`.
pub fn encode_event(name: &str, args: &[Value], id: Option<u64>) -> String {
    let mut arr = Vec::with_capacity(args.len() + 1);
    arr.push(Value::String(name.to_string()));
    arr.extend(args.iter().cloned());
    let body = Value::Array(arr).to_string();
    match id {
        Some(id) => format!("42{id}{body}"),
        None => format!("42{body}"),
    }
}

/// `45<n>-[name, ...args]` (with an optional ack id); attachments follow as binary frames.
pub fn encode_binary_event(
    name: &str,
    args: &[Value],
    attachments: usize,
    id: Option<u64>,
) -> String {
    let mut arr = Vec::with_capacity(args.len() + 1);
    arr.push(Value::String(name.to_string()));
    arr.extend(args.iter().cloned());
    let body = Value::Array(arr).to_string();
    match id {
        Some(id) => format!("45{attachments}-{id}{body}"),
        None => format!("45{attachments}-{body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_packets_the_server_sends() {
        assert_eq!(
            decode_engine(r#"40{"sid":"abc"}"#),
            EnginePacket::Message(Some(SioPacket::Connect(json!({"sid":"abc"}))))
        );
        assert_eq!(
            decode_engine(r#"44{"message":"Invalid token"}"#),
            EnginePacket::Message(Some(SioPacket::ConnectError(
                json!({"message":"Invalid token"})
            )))
        );
        assert_eq!(
            decode_engine(r#"42["pong",{"timestamp":1}]"#),
            EnginePacket::Message(Some(SioPacket::Event {
                name: "pong".into(),
                args: vec![json!({"timestamp":1})],
                id: None
            }))
        );
        assert_eq!(
            decode_engine(r#"4312[{"success":true}]"#),
            EnginePacket::Message(Some(SioPacket::Ack {
                id: 12,
                args: vec![json!({"success":true})]
            }))
        );
        assert_eq!(
            decode_engine("41"),
            EnginePacket::Message(Some(SioPacket::Disconnect))
        );
        assert_eq!(decode_engine("2"), EnginePacket::Ping(String::new()));
        assert_eq!(decode_engine("4x"), EnginePacket::Message(None));
    }

    #[test]
    fn encodes_events() {
        assert_eq!(
            encode_event("room:join", &[json!({"roomName":"general"})], Some(3)),
            r#"423["room:join",{"roomName":"general"}]"#
        );
        assert_eq!(encode_event("ping", &[], None), r#"42["ping"]"#);
        assert_eq!(
            encode_binary_event("x", &[json!({"_placeholder":true,"num":0})], 1, Some(0)),
            r#"451-0["x",{"_placeholder":true,"num":0}]"#
        );
    }
}
