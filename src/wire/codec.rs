//! `FrameCodec`: a tokio-util `Decoder` that cuts a byte stream into OVSDB messages.
//!
//! Two modes, switchable between reads:
//! * whole messages (`Chunk::Message`), bounded by `max_frame`: used where a message may have
//!   to be inspected (client to server, and server replies the session is waiting to fix up);
//! * streaming: once a message has started and is not complete, what has been scanned so far is
//!   handed out at once (`Chunk::Partial`, then `Chunk::End`), so a multi-hundred-MB monitor
//!   reply is relayed without ever being held whole. A message that started streaming finishes
//!   streaming even if the mode is switched off meanwhile.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::scan::{ScanError, Scanner};

/// Default bound on one client-to-server message: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// What the decoder hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// One whole message, with the whitespace that preceded it.
    Message(Bytes),
    /// The beginning or a middle piece of a message being streamed.
    Partial(Bytes),
    /// The last piece of a streamed message.
    End(Bytes),
}

impl Chunk {
    pub fn bytes(&self) -> &Bytes {
        match self {
            Chunk::Message(b) | Chunk::Partial(b) | Chunk::End(b) => b,
        }
    }
}

/// A read buffer that grew to hold a big message goes back to `base` bytes once it is empty.
pub fn shrink(buf: &mut bytes::BytesMut, base: usize) {
    if buf.is_empty() && buf.capacity() > 4 * base {
        *buf = bytes::BytesMut::with_capacity(base);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("message exceeds the {limit}-byte frame limit ({seen} bytes buffered)")]
    TooLarge { limit: usize, seen: usize },
    #[error("stream ended inside a message ({0} bytes unfinished)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug)]
pub struct FrameCodec {
    scanner: Scanner,
    /// How many bytes at the front of the buffer the scanner has already seen.
    scanned: usize,
    max_frame: usize,
    streaming: bool,
    /// A message's head was handed out as `Partial`; its rest must follow the same way.
    mid_stream: bool,
}

impl FrameCodec {
    pub fn new(max_frame: usize) -> Self {
        Self { scanner: Scanner::new(), scanned: 0, max_frame, streaming: false, mid_stream: false }
    }

    /// Enables or disables streaming for messages that have not started yet.
    pub fn set_streaming(&mut self, on: bool) {
        self.streaming = on;
    }
}

impl Decoder for FrameCodec {
    type Item = Chunk;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Chunk>, FrameError> {
        if self.scanned == src.len() {
            return Ok(None);
        }
        match self.scanner.scan(&src[self.scanned..])? {
            Some(n) => {
                let end = self.scanned + n;
                self.scanned = 0;
                let bytes = src.split_to(end).freeze();
                if self.mid_stream {
                    self.mid_stream = false;
                    return Ok(Some(Chunk::End(bytes)));
                }
                if !self.streaming && end > self.max_frame {
                    return Err(FrameError::TooLarge { limit: self.max_frame, seen: end });
                }
                Ok(Some(Chunk::Message(bytes)))
            }
            None => {
                self.scanned = src.len();
                if self.mid_stream || (self.streaming && self.scanner.in_message()) {
                    self.mid_stream = true;
                    self.scanned = 0;
                    return Ok(Some(Chunk::Partial(src.split().freeze())));
                }
                if src.len() > self.max_frame {
                    return Err(FrameError::TooLarge { limit: self.max_frame, seen: src.len() });
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Chunk>, FrameError> {
        if let Some(chunk) = self.decode(src)? {
            return Ok(Some(chunk));
        }
        if self.scanner.in_message() || self.mid_stream {
            return Err(FrameError::Truncated(src.len()));
        }
        // Only whitespace is left.
        src.clear();
        self.scanned = 0;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(codec: &mut FrameCodec, pieces: &[&[u8]]) -> Result<Vec<Chunk>, FrameError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for p in pieces {
            buf.extend_from_slice(p);
            while let Some(c) = codec.decode(&mut buf)? {
                out.push(c);
            }
        }
        while let Some(c) = codec.decode_eof(&mut buf)? {
            out.push(c);
        }
        Ok(out)
    }

    fn msgs(chunks: &[Chunk]) -> Vec<&[u8]> {
        chunks
            .iter()
            .map(|c| match c {
                Chunk::Message(b) => &b[..],
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// Pieces as they arrive, and the whole messages expected from them.
    type Case<'a> = (&'a [&'a [u8]], &'a [&'a [u8]]);

    /// Byte-level cases.
    #[test]
    fn whole_message_table() {
        let cases: &[Case] = &[
            (&[br#"{"id":1}"#], &[br#"{"id":1}"#]),
            (&[br#"{"id":1}{"id":2}"#], &[br#"{"id":1}"#, br#"{"id":2}"#]),
            (&[b"{\"id\":1}\n", b"{\"id\":2}\n"], &[b"{\"id\":1}", b"\n{\"id\":2}"]),
            // split right after a backslash: an escaped quote, then an escaped backslash
            (&[b"{\"a\":\"\\", b"\"\"}"], &[b"{\"a\":\"\\\"\"}"]),
            (&[b"{\"a\":\"\\", b"\\\"}{}"], &[b"{\"a\":\"\\\\\"}", b"{}"]),
            (&[b"{\"a\":\"\xc3", b"\xa9\"}"], &[b"{\"a\":\"\xc3\xa9\"}"]),
            (&[br#"{"a":"{{{"}"#], &[br#"{"a":"{{{"}"#]),
            (
                &[br#"{"id":["monid","OVN_Northbound"],"#, br#""result":{}}"#],
                &[br#"{"id":["monid","OVN_Northbound"],"result":{}}"#],
            ),
            (&[b"   ", b"\n"], &[]),
        ];
        for (pieces, want) in cases {
            let got = feed(&mut FrameCodec::new(DEFAULT_MAX_FRAME), pieces).expect("decodes");
            assert_eq!(msgs(&got), *want, "pieces {pieces:?}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let input = b"{\"id\":\"echo\",\"method\":\"echo\",\"params\":[\"\\\"}\"]}\n{\"id\":[1,{\"a\":null}],\"result\":[],\"error\":null}";
        let pieces: Vec<&[u8]> = input.chunks(1).collect();
        let got = feed(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &pieces).expect("decodes");
        let joined: Vec<u8> = msgs(&got).concat();
        assert_eq!(got.len(), 2);
        assert_eq!(joined, input.to_vec());
    }

    #[test]
    fn frame_limit_applies_to_whole_messages() {
        let mut codec = FrameCodec::new(16);
        let err = feed(&mut codec, &[br#"{"a":"0123456789abcdef"}"#]).expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { limit: 16, .. }), "{err}");
        // An incomplete message is refused as soon as it is past the limit.
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&br#"{"a":"0123456789abcdef"#[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLarge { .. })));
        // A message at the limit passes.
        let ok = feed(&mut FrameCodec::new(16), &[br#"{"a":"01234567"}"#]).expect("fits");
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn streaming_hands_out_pieces_and_ignores_the_limit() {
        let mut codec = FrameCodec::new(8);
        codec.set_streaming(true);
        let got = feed(&mut codec, &[b"{\"a\":\"012", b"3456789\"", b"}{\"b\":1}"]).expect("streams");
        assert_eq!(
            got,
            vec![
                Chunk::Partial(Bytes::from_static(b"{\"a\":\"012")),
                Chunk::Partial(Bytes::from_static(b"3456789\"")),
                Chunk::End(Bytes::from_static(b"}")),
                Chunk::Message(Bytes::from_static(b"{\"b\":1}")),
            ]
        );
    }

    #[test]
    fn a_streamed_message_finishes_streaming_after_the_mode_is_switched_off() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        codec.set_streaming(true);
        let mut buf = BytesMut::from(&b"{\"a\":["[..]);
        assert_eq!(
            codec.decode(&mut buf).expect("ok"),
            Some(Chunk::Partial(Bytes::from_static(b"{\"a\":[")))
        );
        codec.set_streaming(false);
        buf.extend_from_slice(b"1]}{\"b\"");
        assert_eq!(codec.decode(&mut buf).expect("ok"), Some(Chunk::End(Bytes::from_static(b"1]}"))));
        assert_eq!(codec.decode(&mut buf).expect("ok"), None);
        buf.extend_from_slice(b":2}");
        assert_eq!(
            codec.decode(&mut buf).expect("ok"),
            Some(Chunk::Message(Bytes::from_static(b"{\"b\":2}")))
        );
    }

    #[test]
    fn eof_inside_a_message_is_an_error() {
        let err =
            feed(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &[b"{\"id\":1}{\"id\""]).expect_err("truncated");
        assert!(matches!(err, FrameError::Truncated(5)), "{err}");
    }

    #[test]
    fn top_level_array_is_refused() {
        let err = feed(&mut FrameCodec::new(DEFAULT_MAX_FRAME), &[b"[1,2,3]"]).expect_err("array");
        assert!(matches!(err, FrameError::Scan(ScanError::NotAnObject(b'['))), "{err}");
    }
}
