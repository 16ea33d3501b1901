//! Why a WebSocket connection closes, and the close code it then sends (docs/realtime.md):
//! the hub's request to close a client ([`CloseReason`]) and how its socket task ended
//! (`End`): 4403 forbidden room, 4408 slow consumer, 1001 shutdown, 1009 message too large.

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Why a connection is being closed by the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The send queue overflowed (4408).
    Slow,
    /// meshlet is shutting down (1001).
    Shutdown,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    Client,
    PingTimeout,
    Slow,
    Forbidden,
    Shutdown,
    TooBig,
    Error,
}

impl End {
    pub(super) fn close_frame(self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Slow => (CloseCode::from(4408), "slow consumer"),
            End::Forbidden => (CloseCode::from(4403), "forbidden room"),
            End::Shutdown => (CloseCode::Away, "meshlet shutting down"),
            End::TooBig => (CloseCode::Size, "message too large"),
            End::Client | End::PingTimeout | End::Error => return None,
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

impl From<CloseReason> for End {
    fn from(r: CloseReason) -> End {
        match r {
            CloseReason::Slow => End::Slow,
            CloseReason::Shutdown => End::Shutdown,
        }
    }
}
