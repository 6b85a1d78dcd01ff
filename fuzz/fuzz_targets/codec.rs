//! `FrameCodec` fed arbitrary bytes in arbitrary pieces, with streaming switched on and off
//! between reads as the server-to-client direction does.
//!
//! Input: byte 0 = mode (bit 0: start streaming, bit 1: toggle streaming between decodes,
//! bit 2: a small frame limit), bytes 1..4 = seed for the piece sizes, the rest = the stream.
//!
//! Checked: no panic; the chunks handed out, concatenated, are the stream minus trailing
//! whitespace when there is no error (a prefix of it when there is); every whole message and
//! every streamed message ends exactly where an independent byte-by-byte splitter (below) says
//! a top-level object ends; errors are the ones the splitter predicts.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ovn_nb_proxy::wire::{Chunk, FrameCodec, FrameError, ScanError};
use tokio_util::codec::Decoder;

/// How the reference splitter sees the stream end.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Only whitespace after the last message.
    Clean,
    /// Inside a message.
    Truncated,
    /// A byte outside any message that is neither whitespace nor `{`.
    Bad(u8),
}

/// Top-level object boundaries (exclusive ends), one byte at a time, no search tricks. Like the
/// codec, it tracks nesting, strings and escapes, not JSON validity (the server judges that).
fn reference(input: &[u8]) -> (Vec<usize>, End) {
    let (mut depth, mut in_str, mut esc) = (0u32, false, false);
    let mut ends = Vec::new();
    for (i, &b) in input.iter().enumerate() {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'{' => depth += 1,
            b'"' | b'[' | b'}' | b']' if depth > 0 => match b {
                b'"' => in_str = true,
                b'[' => depth += 1,
                _ => {
                    depth -= 1;
                    if depth == 0 {
                        ends.push(i + 1);
                    }
                }
            },
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ if depth == 0 => return (ends, End::Bad(b)),
            _ => {}
        }
    }
    (ends, if depth > 0 { End::Truncated } else { End::Clean })
}

/// A small xorshift for piece sizes: deterministic per input, so crashes reproduce.
struct Rng(u32);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mode = data[0];
    let mut rng = Rng(u32::from_le_bytes([data[1], data[2], data[3], 0x5a]) | 1);
    let input = &data[4..];
    let max_frame = if mode & 4 != 0 { 16 + (data[1] as usize) } else { usize::MAX };
    let mut streaming = mode & 1 != 0;
    let toggle = mode & 2 != 0;

    let mut codec = FrameCodec::new(max_frame);
    codec.set_streaming(streaming);
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    // Offsets in `input` where a whole or streamed message ended.
    let mut ends = Vec::new();
    let mut fed = 0;
    let mut error = None;
    let mut eof = false;
    'feed: loop {
        if fed < input.len() {
            // Mostly small pieces (every split point matters), sometimes all that is left.
            let r = rng.next() as usize;
            let piece =
                if r.is_multiple_of(8) { input.len() - fed } else { (1 + r % 97).min(input.len() - fed) };
            buf.extend_from_slice(&input[fed..fed + piece]);
            fed += piece;
        } else {
            eof = true;
        }
        loop {
            // As the server-to-client tap does: any time, even in the middle of a streamed message.
            if toggle && rng.next().is_multiple_of(3) {
                streaming = !streaming;
                codec.set_streaming(streaming);
            }
            let next = if eof { codec.decode_eof(&mut buf) } else { codec.decode(&mut buf) };
            match next {
                Ok(Some(chunk)) => {
                    out.extend_from_slice(chunk.bytes());
                    if matches!(chunk, Chunk::Message(_) | Chunk::End(_)) {
                        ends.push(out.len());
                    }
                    // The limit binds whole messages decoded with streaming off (streaming is for
                    // the server's messages, which are not bounded).
                    if let (Chunk::Message(m), false) = (&chunk, streaming) {
                        assert!(m.len() <= max_frame, "a whole message over the limit was handed out");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        if eof {
            break;
        }
    }

    // What came out is the stream itself, as far as it went.
    assert_eq!(&out[..], &input[..out.len()], "chunks are not the input bytes");
    let (ref_ends, ref_end) = reference(input);
    let whole = ref_ends.last().copied().unwrap_or(0);
    match error {
        None => {
            assert_eq!(ref_end, End::Clean, "the codec accepted what the reference refuses");
            assert_eq!(out.len(), whole, "output is not the input minus trailing whitespace");
            assert!(input[whole..].iter().all(|b| b.is_ascii_whitespace()));
            assert_eq!(ends, ref_ends, "message boundaries differ from the reference");
        }
        Some(FrameError::Scan(ScanError::NotAnObject(b))) => {
            assert_eq!(ref_end, End::Bad(b), "scan error the reference does not see");
            assert_eq!(ends, ref_ends, "messages before the bad byte differ");
        }
        Some(FrameError::Truncated(_)) => {
            assert_eq!(ref_end, End::Truncated, "truncation the reference does not see");
            assert_eq!(ends, ref_ends);
        }
        Some(FrameError::TooLarge { limit, .. }) => {
            assert_eq!(limit, max_frame);
            assert!(max_frame != usize::MAX, "TooLarge without a limit");
            // Everything before the refused message went out, and that message (with the
            // whitespace before it) is over the limit, or unfinished and already over it.
            assert_eq!(
                ends[..],
                ref_ends[..ends.len().min(ref_ends.len())],
                "boundaries differ before the refusal"
            );
            let start = ends.last().copied().unwrap_or(0);
            let next_end = ref_ends.iter().copied().find(|&e| e > start).unwrap_or(input.len());
            assert!(next_end - start > max_frame, "refused a message within the limit");
        }
        Some(FrameError::Io(e)) => panic!("io error from a pure decoder: {e}"),
    }
});
