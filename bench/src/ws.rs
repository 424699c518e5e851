//! The smallest client the generator needs: one TCP stream, the websocket upgrade (RFC 6455,
//! client side, no extensions), Engine.IO v4 open and Socket.IO v5 namespace connect, then text
//! frames in and out. No per-frame allocation: frames are parsed in place in the read buffer and
//! handed to the caller as byte slices. Engine.IO pings (`2`) and websocket pings are answered
//! here.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Initial read buffer; it grows only for frames larger than this.
const READ_BUF: usize = 4096;

/// Where to connect: the server's address and the `Host` header.
#[derive(Debug, Clone)]
pub struct Target {
    /// Socket address of the server.
    pub addr: SocketAddr,
    /// `host:port` for the `Host` header.
    pub host: String,
}

impl Target {
    /// Parses `http://HOST:PORT` (or `ws://`, or a bare `HOST:PORT`); `HOST` must be an IP
    /// address or `localhost`.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .unwrap_or(url)
            .trim_end_matches('/');
        let rest = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = rest
            .replace("localhost", "127.0.0.1")
            .parse()
            .with_context(|| format!("url {url}: expected http://IP:PORT"))?;
        Ok(Target {
            addr,
            host: rest.to_string(),
        })
    }
}

/// A parsed websocket frame header: opcode, FIN, payload range in the buffer.
struct FrameHead {
    fin: bool,
    opcode: u8,
    payload_start: usize,
    payload_end: usize,
    mask: Option<[u8; 4]>,
}

/// What [`Conn::process`] saw besides text frames.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// Engine.IO pings answered with `3`.
    pub engine_pings: u64,
    /// The server closed the websocket (close frame).
    pub closed: bool,
}

/// One websocket connection speaking Engine.IO v4.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Payload of a fragmented message being reassembled, and whether it is text.
    frag: Vec<u8>,
    frag_text: bool,
    /// Control answers (pong frames) to write after processing.
    out: Vec<u8>,
    /// Reused frame buffer for sends.
    wbuf: Vec<u8>,
}

impl Conn {
    /// Opens a websocket to `target` (from `source` when given), completes the Engine.IO open
    /// and the Socket.IO connect to `/` with `auth` (a JSON object), and returns the connection
    /// and the socket id. `Err` carries the server's `connect_error` message when refused.
    pub async fn open(
        target: &Target,
        source: Option<IpAddr>,
        auth: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Conn, String)> {
        match tokio::time::timeout(timeout, Conn::open_inner(target, source, auth)).await {
            Ok(r) => r,
            Err(_) => bail!("no connect answer within {timeout:?}"),
        }
    }

    async fn open_inner(
        target: &Target,
        source: Option<IpAddr>,
        auth: &str,
    ) -> anyhow::Result<(Conn, String)> {
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            frag: Vec::new(),
            frag_text: false,
            out: Vec::new(),
            wbuf: Vec::with_capacity(256),
        };
        let req = format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.host
        );
        conn.stream.write_all(req.as_bytes()).await?;
        conn.read_upgrade().await?;
        // Engine.IO open packet `0{...}`.
        let open = conn.next_text().await?;
        if !open.starts_with(b"0") {
            bail!(
                "expected the engine open packet, got {}",
                String::from_utf8_lossy(&open)
            );
        }
        conn.send_text(format!("40{auth}").as_bytes()).await?;
        loop {
            let t = conn.next_text().await?;
            if t.starts_with(b"40") {
                let sid = extract_str(&t, b"\"sid\":\"").unwrap_or_default();
                return Ok((conn, sid));
            }
            if t.starts_with(b"44") {
                let msg = extract_str(&t, b"\"message\":\"")
                    .unwrap_or_else(|| String::from_utf8_lossy(&t).into_owned());
                bail!("connect_error: {msg}");
            }
            // Anything else before the connect answer (a ping is answered in next_text).
        }
    }

    /// Reads the HTTP answer to the upgrade; leaves any bytes after it in the buffer.
    async fn read_upgrade(&mut self) -> anyhow::Result<()> {
        loop {
            if let Some(pos) = find(&self.buf[..self.end], b"\r\n\r\n") {
                let head = &self.buf[..pos];
                if !(head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.0 101")) {
                    let line = head.split(|&b| b == b'\r').next().unwrap_or(head);
                    bail!("upgrade refused: {}", String::from_utf8_lossy(line));
                }
                self.start = pos + 4;
                return Ok(());
            }
            if !self.fill().await? {
                bail!("connection closed during the upgrade");
            }
        }
    }

    /// The next complete text message (for the handshake only: allocates).
    async fn next_text(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            let mut got: Option<Vec<u8>> = None;
            let seen = self.process_until(|t| got = Some(t.to_vec()), true);
            self.flush().await?;
            if let Some(t) = got {
                return Ok(t);
            }
            if seen.closed {
                bail!("websocket closed during connect");
            }
            if !self.fill().await? {
                bail!("connection closed during connect");
            }
        }
    }

    /// Reads once from the socket into the buffer. `Ok(false)` at end of stream.
    /// Cancel-safe: it awaits a single `read`.
    pub async fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Hands every complete text message in the buffer to `on_text`; answers Engine.IO and
    /// websocket pings (queued; call [`Conn::flush`] next).
    pub fn process(&mut self, on_text: impl FnMut(&[u8])) -> Seen {
        self.process_until(on_text, false)
    }

    fn process_until(&mut self, mut on_text: impl FnMut(&[u8]), one: bool) -> Seen {
        let mut seen = Seen::default();
        while let Some(h) = self.parse_head() {
            let next = h.payload_end;
            if let Some(key) = h.mask {
                for (i, b) in self.buf[h.payload_start..h.payload_end]
                    .iter_mut()
                    .enumerate()
                {
                    *b ^= key[i % 4];
                }
            }
            let payload = h.payload_start..h.payload_end;
            let mut text: Option<std::ops::Range<usize>> = None;
            let mut reassembled = false;
            match h.opcode {
                0x1 if h.fin => text = Some(payload),
                0x1 | 0x2 if !h.fin => {
                    self.frag.clear();
                    self.frag.extend_from_slice(&self.buf[payload]);
                    self.frag_text = h.opcode == 0x1;
                }
                0x0 => {
                    self.frag.extend_from_slice(&self.buf[payload]);
                    if h.fin && self.frag_text {
                        reassembled = true;
                    }
                }
                0x8 => {
                    seen.closed = true;
                    self.start = next;
                    return seen;
                }
                0x9 => {
                    let p = self.buf[payload].to_vec();
                    push_frame(&mut self.out, 0xA, &p);
                }
                _ => {}
            }
            self.start = next;
            let delivered = if let Some(r) = text {
                let t = &self.buf[r];
                if t == b"2" {
                    push_frame(&mut self.out, 0x1, b"3");
                    seen.engine_pings += 1;
                    false
                } else {
                    on_text(t);
                    true
                }
            } else if reassembled {
                let t = std::mem::take(&mut self.frag);
                on_text(&t);
                self.frag = t;
                self.frag.clear();
                true
            } else {
                false
            };
            if one && delivered {
                return seen;
            }
        }
        seen
    }

    fn parse_head(&self) -> Option<FrameHead> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let len7 = (b[1] & 0x7f) as usize;
        let (len, mut head) = match len7 {
            126 => {
                if b.len() < 4 {
                    return None;
                }
                (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
            }
            127 => {
                if b.len() < 10 {
                    return None;
                }
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l) as usize, 10)
            }
            n => (n, 2),
        };
        let mask = if masked {
            if b.len() < head + 4 {
                return None;
            }
            let k = [b[head], b[head + 1], b[head + 2], b[head + 3]];
            head += 4;
            Some(k)
        } else {
            None
        };
        if b.len() < head + len {
            return None;
        }
        Some(FrameHead {
            fin,
            opcode,
            payload_start: self.start + head,
            payload_end: self.start + head + len,
            mask,
        })
    }

    /// Writes the queued control answers, if any.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends one text frame (an Engine.IO packet such as `42[...]`).
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.wbuf.clear();
        push_frame(&mut self.wbuf, 0x1, payload);
        self.stream.write_all(&self.wbuf).await
    }

    /// Sends `41` (namespace disconnect) and a close frame; errors are ignored.
    pub async fn close(mut self) {
        let mut b = Vec::new();
        push_frame(&mut b, 0x1, b"41");
        push_frame(&mut b, 0x8, &[]);
        let _ = self.stream.write_all(&b).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Appends a client frame (FIN set, masked with a zero key: the XOR is the identity, which
/// RFC 6455 allows and saves copying the payload).
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The JSON string value that follows `key` (e.g. `"sid":"`), without unescaping.
fn extract_str(hay: &[u8], key: &[u8]) -> Option<String> {
    let at = find(hay, key)? + key.len();
    let len = hay[at..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&hay[at..at + len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_masked_with_a_zero_key() {
        let mut out = Vec::new();
        push_frame(&mut out, 0x1, b"42[\"ping\"]");
        assert_eq!(&out[..2], &[0x81, 0x80 | 10]);
        assert_eq!(&out[2..6], &[0, 0, 0, 0]);
        assert_eq!(&out[6..], b"42[\"ping\"]");
        let mut long = Vec::new();
        push_frame(&mut long, 0x1, &[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 0x80 | 126, 1, 44]);
    }

    #[test]
    fn extracts_string_fields() {
        assert_eq!(
            extract_str(br#"40{"sid":"abc-1"}"#, b"\"sid\":\"").as_deref(),
            Some("abc-1")
        );
        assert_eq!(extract_str(b"40", b"\"sid\":\""), None);
    }

    #[test]
    fn parses_targets() {
        let t = Target::parse("http://127.0.0.1:3101/").unwrap();
        assert_eq!(t.addr.port(), 3101);
        assert_eq!(t.host, "127.0.0.1:3101");
        assert!(Target::parse("http://example:1").is_err());
    }
}
