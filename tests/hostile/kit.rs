//! What every hostile test shares: the meshlet under attack (all four listeners, an
//! upstream, an app and the hub), the well-behaved neighbour whose latency each attack must
//! leave alone, a panic watch on meshlet's threads, and raw bytes for HTTP/1.1, h2 frames
//! and WebSocket frames (the attacks are malformed on purpose: no client library sends them).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use meshlet::sidecar::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::realtime::{token, SECRET};
use crate::support::{send, sidecar, Upstream};

/// The slowest answer a well-behaved neighbour may get while an attack runs on its
/// listener: generous (a loaded 2-core CI machine), yet far below any attack's duration
/// and any timeout an attack could make the neighbour wait out.
pub const NEIGHBOUR_BOUND: Duration = Duration::from_millis(750);

/// `limits.header_read_timeout` of the meshlet under attack: slowloris heads are cut after it.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// The four listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Outbound,
    Inbound,
    Api,
    Telemetry,
}

pub const ALL: [Listener; 4] = [
    Listener::Outbound,
    Listener::Inbound,
    Listener::Api,
    Listener::Telemetry,
];

/// The data-plane listeners (parked HTTP/1.1, requests sent on to an upstream).
pub const DATA_PLANE: [Listener; 2] = [Listener::Outbound, Listener::Inbound];

impl Listener {
    /// The request target and `host` of a request for `path` on this listener: absolute
    /// form toward the static destination `inventory` on the outbound side.
    pub fn target(self, path: &str) -> (String, &'static str) {
        match self {
            Listener::Outbound => (format!("http://inventory{path}"), "inventory"),
            _ => (path.to_owned(), "127.0.0.1"),
        }
    }

    /// A path this listener answers 200 to.
    pub fn good_path(self) -> &'static str {
        match self {
            Listener::Outbound | Listener::Inbound => "/x",
            Listener::Api => "/v1/config",
            Listener::Telemetry => "/healthz/live",
        }
    }

    /// `METHOD target HTTP/1.1\r\nhost: …\r\n` for `path` (the head is not ended).
    pub fn head(self, method: &str, path: &str) -> String {
        let (target, host) = self.target(path);
        format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\n")
    }
}

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts panics on meshlet's threads (its workers, and the runtime's worker threads that
/// run the control-plane listeners and hyper's h2 tasks); the tests' own assertions run on
/// the test thread and are not counted. A panic in a connection's task is caught by tokio
/// and would otherwise only show as a closed connection.
fn watch_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if name.starts_with("meshlet-") || name.starts_with("tokio-runtime-worker") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// No meshlet thread has panicked in this test binary so far.
pub fn assert_no_panics() {
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a meshlet thread panicked (see the test output)"
    );
}

/// The meshlet under attack: `orders`, with its app, the static destination `inventory`,
/// and the hub on its inbound listener.
pub struct Target {
    pub sidecar: Sidecar,
    /// `inventory`, behind the outbound listener.
    pub upstream: Upstream,
    /// The app, behind the inbound listener.
    pub app: Upstream,
}

impl Target {
    /// Started with `limits: {header_read_timeout: 1s, <limits>}`.
    pub async fn start(limits: &str) -> Target {
        watch_panics();
        let upstream = Upstream::start("inventory").await;
        let app = Upstream::start("app").await;
        let yaml = format!(
            "service: {{name: orders, app: \"http://{}\"}}\nworkers: 1\n\
             registry: {{static: {{inventory: [\"{}\"]}}}}\n\
             limits: {{header_read_timeout: {}ms{limits}}}\n\
             realtime:\n  path: /ws\n  auth: {{secret: \"{SECRET}\", require: true}}\n",
            app.addr,
            upstream.addr,
            HEAD_TIMEOUT.as_millis(),
        );
        let sidecar = sidecar(&yaml).await;
        Target {
            sidecar,
            upstream,
            app,
        }
    }

    pub fn addr(&self, listener: Listener) -> SocketAddr {
        let a = &self.sidecar.addresses;
        match listener {
            Listener::Outbound => a.outbound,
            Listener::Inbound => a.inbound.expect("an inbound listener"),
            Listener::Api => a.api,
            Listener::Telemetry => a.telemetry,
        }
    }

    /// Runs `attack` while a well-behaved client asks `listener` every 50 ms (at least 3
    /// times, at most 200); asserts each answer was 200 within [`NEIGHBOUR_BOUND`].
    pub async fn beside<T>(&self, listener: Listener, attack: impl Future<Output = T>) -> T {
        beside(self.addr(listener), listener, attack).await
    }
}

/// One well-behaved request on a fresh connection: asserted 200; how long it took.
pub async fn probe(addr: SocketAddr, listener: Listener) -> Duration {
    let (target, host) = listener.target(listener.good_path());
    let req = Request::get(target)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), send(addr, req))
        .await
        .unwrap_or_else(|_| panic!("{listener:?}: a well-behaved request got no answer in 10 s"))
        .unwrap_or_else(|e| panic!("{listener:?}: a well-behaved request failed: {e}"));
    assert_eq!(answer.status, 200, "{listener:?}: {:?}", answer.body);
    started.elapsed()
}

/// See [`Target::beside`].
pub async fn beside<T>(addr: SocketAddr, listener: Listener, attack: impl Future<Output = T>) -> T {
    let done = AtomicBool::new(false);
    let attacking = async {
        let out = attack.await;
        done.store(true, Ordering::SeqCst);
        out
    };
    let probing = async {
        let mut slowest = Duration::ZERO;
        let mut probes = 0;
        while probes < 200 && (probes < 3 || !done.load(Ordering::SeqCst)) {
            slowest = slowest.max(probe(addr, listener).await);
            probes += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (slowest, probes)
    };
    let (out, (slowest, probes)) = tokio::join!(attacking, probing);
    assert!(
        slowest < NEIGHBOUR_BOUND,
        "{listener:?}: the slowest of {probes} well-behaved requests during the attack took {slowest:?}"
    );
    out
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 over a raw socket

/// One answer read off a raw socket.
pub struct Reply {
    pub status: u16,
    /// The head's header lines, names lowercased (`name: value`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    /// The body cut to 200 bytes: an echoed 100 KiB header would drown the message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]);
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("body", &body)
            .finish()
    }
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A client socket that writes whatever it is given and reads answers off it by hand.
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect within 5 s")
            .expect("connect");
        Raw {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes `bytes` from a task of its own (over a second handle on the socket) while
    /// the test reads: a server that answers before it read everything cannot block the
    /// test's write. The task ends when the bytes are written, the server closes, or 10 s.
    pub fn write_beside(&self, bytes: Vec<u8>) -> tokio::task::JoinHandle<bool> {
        let dup = socket2::SockRef::from(&self.stream)
            .try_clone()
            .expect("a second handle on the socket");
        let mut writer =
            TcpStream::from_std(std::net::TcpStream::from(dup)).expect("a tokio socket");
        tokio::spawn(async move {
            let write = writer.write_all(&bytes);
            matches!(
                tokio::time::timeout(Duration::from_secs(10), write).await,
                Ok(Ok(()))
            )
        })
    }

    /// Writes `bytes`; false when the server already closed (a refusal may come first).
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads more bytes before `deadline`; false on EOF or reset. Panics at the deadline.
    async fn fill(&mut self, deadline: tokio::time::Instant, what: &str) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Err(_) => panic!("{what}: neither an answer nor a close in time"),
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next whole answer, `None` when the server closed (or reset) first. Panics when
    /// neither comes `within`.
    pub async fn reply(&mut self, within: Duration) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + within;
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if !self.fill(deadline, "a reply head").await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        self.buf.drain(..head_end + 4);
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(at) = find(&self.buf, b"\r\n") {
                        break at;
                    }
                    if !self.fill(deadline, "a chunk size").await {
                        return None;
                    }
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
                while self.buf.len() < line_end + 2 + size + 2 {
                    if !self.fill(deadline, "a chunk").await {
                        return None;
                    }
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else if let Some(len) = value("content-length") {
            let len: usize = len.parse().expect("content-length");
            while self.buf.len() < len {
                if !self.fill(deadline, "a body").await {
                    return None;
                }
            }
            self.buf.drain(..len).collect()
        } else if status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else {
            while self.fill(deadline, "a body read to the close").await {}
            std::mem::take(&mut self.buf)
        };
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closes the connection `within` (what it sends first is dropped).
    pub async fn closed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// h2 frames by hand

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// h2 error codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const FRAME_SIZE_ERROR: u32 = 6;
pub const COMPRESSION_ERROR: u32 = 9;
pub const ENHANCE_YOUR_CALM: u32 = 11;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The preface and an empty SETTINGS frame.
pub fn h2_start() -> Vec<u8> {
    let mut b = H2_PREFACE.to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[]));
    b
}

/// An HPACK integer with an `n`-bit prefix under `flags`.
fn hpack_int(flags: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// One header as an HPACK literal without indexing, no Huffman.
pub fn hpack_literal(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(0);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a GET of `path` on `listener`, plus `extra` headers.
pub fn h2_get_block(listener: Listener, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let (authority, path) = match listener {
        Listener::Outbound => ("inventory", path.to_owned()),
        _ => ("127.0.0.1", path.to_owned()),
    };
    let mut block = Vec::new();
    hpack_literal(":method", "GET", &mut block);
    hpack_literal(":scheme", "http", &mut block);
    hpack_literal(":path", &path, &mut block);
    hpack_literal(":authority", authority, &mut block);
    for (n, v) in extra {
        hpack_literal(n, v, &mut block);
    }
    block
}

/// One frame read off the wire.
#[derive(Debug)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// The next frame; `None` on EOF, reset or `deadline`.
pub async fn read_frame(socket: &mut TcpStream, deadline: tokio::time::Instant) -> Option<H2Frame> {
    let mut head = [0u8; 9];
    tokio::time::timeout_at(deadline, socket.read_exact(&mut head))
        .await
        .ok()?
        .ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tokio::time::timeout_at(deadline, socket.read_exact(&mut payload))
        .await
        .ok()?
        .ok()?;
    Some(H2Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// How an h2 connection ended, or how one stream of it was answered.
#[derive(Debug, Default)]
pub struct H2Outcome {
    /// The GOAWAY's error code.
    pub goaway: Option<u32>,
    /// The watched stream's `:status`.
    pub status: Option<u16>,
    /// The watched stream's RST_STREAM error code.
    pub reset: Option<u32>,
    /// The connection closed (EOF or reset).
    pub closed: bool,
    /// Nothing decisive came within the time given.
    pub timed_out: bool,
    /// Frames of each type seen (by type number, 0–9).
    pub seen: [usize; 10],
}

/// Reads frames until a GOAWAY, an answer or reset on `stream` (0: none watched), EOF, or
/// `within` (then `timed_out`).
pub async fn h2_watch(socket: &mut TcpStream, stream: u32, within: Duration) -> H2Outcome {
    let deadline = tokio::time::Instant::now() + within;
    let mut out = H2Outcome::default();
    loop {
        let Some(f) = read_frame(socket, deadline).await else {
            out.timed_out = tokio::time::Instant::now() >= deadline;
            out.closed = !out.timed_out;
            return out;
        };
        if let Some(n) = out.seen.get_mut(f.kind as usize) {
            *n += 1;
        }
        match f.kind {
            GOAWAY if f.payload.len() >= 8 => {
                out.goaway = Some(u32::from_be_bytes([
                    f.payload[4],
                    f.payload[5],
                    f.payload[6],
                    f.payload[7],
                ]));
                return out;
            }
            HEADERS if stream != 0 && f.stream == stream => {
                out.status = status_of(&f.payload);
                return out;
            }
            RST_STREAM if stream != 0 && f.stream == stream && f.payload.len() >= 4 => {
                out.reset = Some(u32::from_be_bytes([
                    f.payload[0],
                    f.payload[1],
                    f.payload[2],
                    f.payload[3],
                ]));
                return out;
            }
            _ => {}
        }
    }
}

/// The `:status` of a response header block, when it comes first (as every server sends
/// it): indexed, or a literal with the indexed name `:status` (Huffman or not).
pub fn status_of(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    // Dynamic table size updates (001xxxxx) may come first.
    while i < block.len() && block[i] & 0xe0 == 0x20 {
        i += 1;
    }
    let first = *block.get(i)?;
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // Literal, name index 8: with incremental indexing (0x48), without (0x08), never (0x18).
    if ![0x48, 0x08, 0x18].contains(&first) {
        return None;
    }
    let len_byte = *block.get(i + 1)?;
    let len = (len_byte & 0x7f) as usize;
    let value = block.get(i + 2..i + 2 + len)?;
    let text = if len_byte & 0x80 == 0 {
        String::from_utf8_lossy(value).into_owned()
    } else {
        huffman_digits(value)
    };
    text.parse().ok()
}

/// Decodes a Huffman string of digits (RFC 7541 Appendix B: '0'-'2' are 5 bits, '3'-'9' 6).
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let take = |at: usize, n: usize| -> Option<u8> {
        bits.get(at..at + n)
            .map(|b| b.iter().fold(0u8, |acc, bit| acc << 1 | bit))
    };
    let mut out = String::new();
    let mut at = 0;
    while out.len() < 3 {
        match take(at, 5) {
            Some(v @ 0..=2) => {
                out.push((b'0' + v) as char);
                at += 5;
            }
            Some(_) => match take(at, 6) {
                Some(v @ 25..=31) => {
                    out.push((b'3' + (v - 25)) as char);
                    at += 6;
                }
                _ => break,
            },
            None => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// WebSocket frames by hand

/// A hub client past the handshake (as user `user`), on a raw socket.
pub async fn ws_raw(addr: SocketAddr, user: &str) -> Raw {
    let mut raw = Raw::connect(addr).await;
    let head = format!(
        "GET /ws?token={} HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        token(user, None)
    );
    assert!(raw.send(head.as_bytes()).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let end = loop {
        if let Some(at) = find(&raw.buf, b"\r\n\r\n") {
            break at;
        }
        assert!(raw.fill(deadline, "the 101").await, "closed before the 101");
    };
    let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    raw.buf.drain(..end + 4);
    raw
}

/// A client frame (masked unless `masked` is false) with FIN as given.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A server frame.
#[derive(Debug)]
pub struct WsFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Raw {
    /// The next server frame; `None` on EOF or reset. Panics after `within`.
    pub async fn ws_next(&mut self, within: Duration) -> Option<WsFrame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(n) as usize, 10)
                    }
                    n @ 0..=125 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(WsFrame { opcode, payload });
                }
            }
            if !self.fill(deadline, "a WebSocket frame").await {
                return None;
            }
        }
    }

    /// Reads frames until a close frame (its code; `Some(0)` when it has none) or the
    /// socket's end (`None`). Panics after `within`.
    pub async fn ws_close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.ws_next(left).await?;
            if f.opcode == 8 {
                return Some(if f.payload.len() >= 2 {
                    u16::from_be_bytes([f.payload[0], f.payload[1]])
                } else {
                    0
                });
            }
        }
    }

    /// The next text frame's JSON (pings skipped).
    pub async fn ws_json(&mut self, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.ws_next(left).await.expect("a frame, not a close");
            match f.opcode {
                1 => return serde_json::from_slice(&f.payload).expect("a JSON text frame"),
                8 => panic!("closed: {:?}", f.payload),
                _ => {}
            }
        }
    }
}
