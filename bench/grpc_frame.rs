//! gRPC message framing shared by the gRPC bench origin and load client: each message is a
//! 1-byte compressed flag (always 0 here), a 4-byte big-endian length, then the protobuf
//! bytes.

use bytes::{Bytes, BytesMut};

/// The fixed protobuf message both sides send: `message Hello { string text = 1; }` with
/// `text` = "hello from the gRPC bench" (field 1, wire type 2: tag 0x0a, then the length).
pub const HELLO: &[u8] = b"\x0a\x19hello from the gRPC bench";

/// `message` with its gRPC frame header.
pub fn framed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    // A bench message is a few dozen bytes: far below u32::MAX.
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// Takes one whole framed message (header included) off the front of `buf`, if it holds one.
pub fn take_message(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    Some(buf.split_to(5 + len).freeze())
}
