//! One client's socket task: the welcome, the client's frames, the bounded send queue
//! drained to the socket in batches, WebSocket pings, and the close codes of docs/realtime.md
//! (4403 forbidden room, 4408 slow consumer, 1001 shutdown, 1009 frame too large).
//!
//! Every write races the hub's close request and a deadline: a client that stops reading
//! blocks only its own task, and is cut once its queue overflows or a write stalls for
//! `ping_timeout`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::close::{CloseReason, End};
use super::delivery::{Delivery, Offset};
use super::frames::{self, ClientFrame, FrameError};
use super::hub::{Admission, Client};
use super::Realtime;
use crate::control::Shutdown;

/// Largest client message (and frame) accepted; larger ones close the socket with 1009.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Frames written per flush when the queue holds many.
const WRITE_BATCH: usize = 64;
/// How long the closing handshake may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Socket settings: small buffers (a hub holds thousands of mostly idle sockets) and the
/// message size limit. tungstenite zero-fills its whole read buffer before the first
/// read, so its size is resident memory for every connection: 256 bytes hold a client's
/// usual frames (join, leave, ping, a small publish) in one read, and a larger frame grows
/// the buffer to its length while it is read (2.3 MiB less than 512 at 10,000 clients,
/// docs/performance.md).
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(4 * 1024)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Serves one upgraded connection until it ends, then removes the client from the hub.
pub(super) async fn serve(
    hub: Arc<Realtime>,
    upgraded: Upgraded,
    client: Arc<Client>,
    admission: Admission,
) {
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(socket_config()),
    )
    .await;
    // Boxed, here and below: steps that run once (or once a frame) would otherwise
    // size every idle connection's task by their largest state.
    Box::pin(hub.connected(&client)).await;
    let mut session = Session {
        ws,
        clean: true,
        closed: false,
        dedupe: HashMap::new(),
        sent: 0,
        probe: None,
        last_probe: None,
        slow_after: hub.config.slow_after.get().max(Duration::from_millis(50)),
        shutdown: hub.shutdown.clone(),
        client: client.clone(),
        hub: hub.clone(),
    };
    let end = session.run().await;
    let end = Box::pin(session.finish(end)).await;
    client.queue.close();
    hub.disconnected(&client);
    let d = &hub.metrics.disconnects;
    match end {
        End::Client => d.client.inc(),
        End::PingTimeout => d.ping_timeout.inc(),
        End::Slow => d.slow.inc(),
        End::Forbidden => d.forbidden.inc(),
        End::Shutdown => d.shutdown.inc(),
        End::TooBig => d.too_big.inc(),
        End::Error => d.error.inc(),
    }
    tracing::debug!(client = %client.id, ?end, "websocket closed");
    drop(admission);
}

struct Session {
    ws: Socket,
    /// No frame is half-written (so a close frame may still be written on drop).
    clean: bool,
    /// The close handshake ran (or the socket is beyond saving).
    closed: bool,
    /// After a join, the room's offset already covered by `joined` and the replay: live
    /// messages up to it are duplicates.
    dedupe: HashMap<Arc<str>, Offset>,
    /// Frames written since the counter was last updated.
    sent: u64,
    /// When the ping sent along with deliveries, not answered yet, went out.
    probe: Option<Instant>,
    /// When the last such ping went out.
    last_probe: Option<Instant>,
    /// `realtime.slow_after`: a probe unanswered this long means the client stopped
    /// reading (its socket buffers may absorb a lot before a write ever blocks).
    slow_after: Duration,
    shutdown: Shutdown,
    client: Arc<Client>,
    hub: Arc<Realtime>,
}

impl Session {
    async fn run(&mut self) -> End {
        let welcome = frames::welcome(&self.client.id, self.client.user.as_deref());
        if let Err(end) = self.write(vec![welcome]).await {
            return end;
        }
        let every = self
            .hub
            .config
            .ping_interval
            .get()
            .max(Duration::from_millis(10));
        let patience = self.hub.config.ping_timeout.get();
        let mut next_ping = Instant::now() + every;
        let mut pong_due: Option<Instant> = None;
        // One timer for the ping, its timeout and the probe's, on the heap: each inline
        // timer would grow every connection's task by its size.
        let mut timer = Box::pin(sleep_until(next_ping));
        loop {
            if self.shutdown.is_started() {
                return End::Shutdown;
            }
            let probe_due = self.probe.map(|sent| sent + self.slow_after);
            let due = [Some(next_ping), pong_due, probe_due]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_ping);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                biased;
                () = self.client.closing.notified() => {
                    let end = self.client.close_reason().map_or(End::Error, End::from);
                    return end;
                }
                () = self.shutdown.started() => return End::Shutdown,
                () = timer.as_mut() => {
                    let now = Instant::now();
                    if probe_due.is_some_and(|t| t <= now) {
                        // Messages went out, the ping among them was never answered.
                        if self.client.close(CloseReason::Slow) {
                            self.hub.metrics.slow_dropped.inc();
                        }
                        return End::Slow;
                    }
                    if pong_due.is_some_and(|t| t <= now) {
                        return End::PingTimeout;
                    }
                    if next_ping <= now {
                        next_ping = now + every;
                        pong_due.get_or_insert(now + patience);
                        if let Err(end) = self.write_message(Message::Ping(Default::default())).await {
                            return end;
                        }
                    }
                }
                delivery = self.client.queue.pop() => {
                    if let Err(end) = self.forward(delivery).await {
                        return end;
                    }
                }
                incoming = self.ws.next() => {
                    // Any frame proves the peer alive (and reading), not only a pong.
                    pong_due = None;
                    self.probe = None;
                    match incoming {
                        None => return End::Client,
                        Some(Ok(Message::Text(text))) => {
                            self.hub.metrics.messages_in.inc();
                            if let Err(end) = Box::pin(self.on_text(text.as_str())).await {
                                return end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.hub.metrics.messages_in.inc();
                            let e = FrameError::Binary;
                            if let Err(end) = self.write(vec![frames::error(e.code(), &e.to_string())]).await {
                                return end;
                            }
                        }
                        // Pongs answer our pings; pings are answered by tungstenite on the
                        // next read; a close is answered by tungstenite, and the stream then ends.
                        Some(Ok(_)) => {}
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                            return End::TooBig;
                        }
                        Some(Err(_)) => return End::Client,
                    }
                }
            }
        }
    }

    /// Handles one client frame; `Err` ends the connection.
    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => {
                return self
                    .write(vec![frames::error(e.code(), &e.to_string())])
                    .await
            }
        };
        match frame {
            ClientFrame::Ping => self.write(vec![frames::pong()]).await,
            ClientFrame::Join { room, since } => {
                if !frames::valid_room(&room) {
                    let e = super::RealtimeError::BadRoom(room);
                    return self
                        .write(vec![frames::error(e.code(), &e.to_string())])
                        .await;
                }
                if !self.client.identity.may_join(&room) {
                    return Err(End::Forbidden);
                }
                match self.hub.join(&self.client, &room, since.as_deref()).await {
                    Ok(joined) => {
                        let recovery = joined.recovery;
                        let latest = recovery.latest.map(|o| o.to_string());
                        let mut out = Vec::with_capacity(1 + recovery.missed.len());
                        out.push(frames::joined(&room, latest.as_deref(), recovery.recovered));
                        for m in &recovery.missed {
                            out.push(frames::message(
                                Some(&room),
                                m.offset.as_deref(),
                                &m.event,
                                &m.data,
                            ));
                        }
                        match recovery.latest {
                            Some(latest) => self.dedupe.insert(joined.room, latest),
                            None => self.dedupe.remove(&joined.room),
                        };
                        self.write(out).await
                    }
                    Err(e) => {
                        self.write(vec![frames::error(e.code(), &e.to_string())])
                            .await
                    }
                }
            }
            ClientFrame::Leave { room } => {
                self.hub.leave(&self.client, &room);
                self.dedupe.remove(room.as_str());
                self.write(vec![frames::left(&room)]).await
            }
            ClientFrame::Publish { room, data, event } => {
                match self
                    .hub
                    .client_publish(&self.client, room, event, data)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        self.write(vec![frames::error(e.code(), &e.to_string())])
                            .await
                    }
                }
            }
        }
    }

    /// Writes a queued delivery and whatever else is queued (up to a batch), dropping
    /// duplicates of a recovery.
    async fn forward(&mut self, first: Arc<Delivery>) -> Result<(), End> {
        let mut batch = Vec::with_capacity(8);
        let mut next = Some(first);
        while let Some(d) = next.take() {
            if !self.duplicate(&d) {
                batch.push(d.frame.clone());
            }
            if batch.len() < WRITE_BATCH {
                next = self.client.queue.try_pop();
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        // A ping rides along (same write) when none is outstanding and the last one is a
        // quarter of `slow_after` old: a client that reads answers it at once.
        let probe = self.probe.is_none()
            && self
                .last_probe
                .is_none_or(|t| t.elapsed() >= self.slow_after / 4);
        let n = batch.len() as u64;
        let ping = probe.then(|| Message::Ping(Default::default()));
        self.guarded(batch.into_iter().map(Message::Text).chain(ping))
            .await?;
        if probe {
            let now = Instant::now();
            self.probe = Some(now);
            self.last_probe = Some(now);
        }
        self.count_sent(n);
        Ok(())
    }

    fn duplicate(&mut self, d: &Delivery) -> bool {
        let (Some(room), Some(offset)) = (&d.room, d.offset) else {
            return false;
        };
        let Some(seen) = self.dedupe.get(room) else {
            return false;
        };
        if offset <= *seen {
            return true;
        }
        // Offsets only grow: past the recovery point nothing can repeat any more.
        self.dedupe.remove(room);
        false
    }

    async fn write(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), End> {
        let n = frames.len() as u64;
        self.guarded(frames.into_iter().map(Message::Text)).await?;
        self.count_sent(n);
        Ok(())
    }

    fn count_sent(&mut self, n: u64) {
        self.sent += n;
        if self.sent >= 16 || self.client.queue.is_empty() {
            self.hub.metrics.messages_out.inc_by(self.sent);
            self.sent = 0;
        }
    }

    async fn write_message(&mut self, message: Message) -> Result<(), End> {
        self.guarded(std::iter::once(message)).await
    }

    /// Feeds `messages` and flushes, racing the hub's close request and a stall deadline.
    async fn guarded(&mut self, messages: impl Iterator<Item = Message>) -> Result<(), End> {
        let stall = self
            .hub
            .config
            .ping_timeout
            .get()
            .max(Duration::from_millis(100));
        let Session {
            ws,
            client,
            clean,
            hub,
            ..
        } = self;
        *clean = false;
        let write = async {
            for m in messages {
                ws.feed(m).await?;
            }
            ws.flush().await
        };
        tokio::pin!(write);
        // Nearly every write fits in the socket at once: then no timer is armed and no
        // waiter registered (at 10,000 recipients a message, that is most of the cost
        // besides the write itself).
        let written = match write.as_mut().now_or_never() {
            Some(done) => Ok(done),
            // Boxed: a blocked write is rare, its timer and waiter need not be in every
            // connection's task.
            None => {
                let blocked = Box::pin(async {
                    tokio::select! {
                        biased;
                        written = timeout(stall, write) => Some(written),
                        () = client.closing.notified() => None,
                    }
                });
                match blocked.await {
                    Some(written) => written,
                    None => return Err(client.close_reason().map_or(End::Error, End::from)),
                }
            }
        };
        match written {
            Ok(Ok(())) => {
                *clean = true;
                Ok(())
            }
            Ok(Err(_)) => Err(End::Client),
            Err(_) => {
                // The peer stopped reading: its socket is full.
                if client.close(CloseReason::Slow) {
                    hub.metrics.slow_dropped.inc();
                }
                Err(End::Slow)
            }
        }
    }

    /// Ends the connection with `end`'s close code: at shutdown, first writes what is
    /// queued; then the close frame, and waits (briefly) for the client's close reply.
    async fn finish(&mut self, end: End) -> End {
        self.close_with(end).await;
        self.closed = true;
        self.hub
            .metrics
            .messages_out
            .inc_by(std::mem::take(&mut self.sent));
        end
    }

    async fn close_with(&mut self, end: End) {
        if end == End::Shutdown {
            let mut pending = Vec::new();
            while let Some(d) = self.client.queue.try_pop() {
                if !self.duplicate(&d) {
                    pending.push(d.frame.clone());
                }
            }
            if !pending.is_empty() && self.write(pending).await.is_err() {
                return;
            }
        }
        let Some(frame) = end.close_frame() else {
            return;
        };
        // After a stalled write the rest of its frame waits in tungstenite's buffer: the
        // close frame goes after it, so framing stays intact (a client that resumes reading
        // gets what was buffered, then the code).
        self.closed = true;
        let ws = &mut self.ws;
        let _ = timeout(CLOSE_WAIT, async {
            if ws.close(Some(frame)).await.is_err() {
                return;
            }
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

impl Drop for Session {
    /// The sidecar drops the worker runtime right after its listeners drain, which can be
    /// before this task saw the shutdown signal. Then the task is dropped instead of
    /// polled; while the runtime's I/O driver is still up, write the 1001 close frame
    /// without waiting (best effort: one non-blocking write of a frame tungstenite made).
    fn drop(&mut self) {
        if self.closed || !self.clean || !self.shutdown.is_started() {
            return;
        }
        let Some(close) = End::Shutdown.close_frame() else {
            return;
        };
        let mut bytes = Vec::with_capacity(32);
        if Frame::close(Some(close)).format(&mut bytes).is_err() {
            return;
        }
        let io = self.ws.get_mut();
        let mut cx = Context::from_waker(Waker::noop());
        let _ = Pin::new(io).poll_write(&mut cx, &bytes);
    }
}
