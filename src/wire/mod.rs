//! The wire layer: framing of a delimiter-less stream of JSON texts and a cheap look at the
//! JSON-RPC 1.0 envelope. Pure: no sockets, no tokio runtime, no policy.
//!
//! **Invariant**: a frame's `raw` bytes are exactly the bytes that arrived, including any
//! whitespace before the message. Forwarding `raw` is forwarding the message byte for byte.

mod codec;
mod message;
mod scan;

pub use codec::{shrink, Chunk, FrameCodec, FrameError, DEFAULT_MAX_FRAME};
pub use message::{id_key, Envelope, EnvelopeError, Kind};
pub use scan::{ScanError, Scanner};
