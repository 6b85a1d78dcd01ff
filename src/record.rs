//! Session transcripts (`--record DIR`): one JSON-lines file per client session, each line one
//! message exactly as relayed, with a timestamp, the direction, and — for a request the policy
//! rewrote — the client's original and the changes. `replay` plays them back.
//!
//! Line format (`t` is seconds since the Unix epoch):
//! `{"t":1700000000.123,"dir":"c2s","raw":"<message as sent upstream>"}`
//! `{"t":…,"dir":"c2s","raw":"<sent>","original":"<as the client wrote it>","rewrite":[<Change>…]}`
//! `{"t":…,"dir":"s2c","raw":"<message as sent to the client>"}`
//! `{"t":…,"event":"truncated"}` when the size cap is reached (nothing is recorded after it),
//! and a first line `{"t":…,"event":"open","session":N,"peer":"…"}`.
//! Messages that are not valid UTF-8 are stored as `"raw_b64"` instead of `"raw"`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::policy::Change;
use crate::wire::Chunk;

#[derive(Debug, Clone)]
pub struct RecordConfig {
    pub dir: PathBuf,
    /// Bytes per transcript file; past it the transcript ends with a `truncated` event.
    pub max_bytes: u64,
}

pub struct Recorder {
    out: BufWriter<File>,
    written: u64,
    max: u64,
    truncated: bool,
    /// A streamed server message being assembled (bounded by the cap).
    partial: Vec<u8>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// The message text: `"raw"` when UTF-8, else `"raw_b64"`.
fn raw_field(bytes: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(bytes) {
        Ok(s) => ("raw", Value::String(s.trim_start().to_string())),
        Err(_) => ("raw_b64", Value::String(b64(bytes))),
    }
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Recorder {
    /// Creates `DIR/session-<unix ms>-<id>.jsonl`.
    pub fn create(cfg: &RecordConfig, session: u64, peer: &str) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(&cfg.dir)?;
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
        let path = cfg.dir.join(format!("session-{ms}-{session}.jsonl"));
        let mut r = Recorder {
            out: BufWriter::new(File::create(path)?),
            written: 0,
            max: cfg.max_bytes,
            truncated: false,
            partial: Vec::new(),
        };
        r.line(json!({"t": now(), "event": "open", "session": session, "peer": peer}));
        Ok(r)
    }

    fn line(&mut self, v: Value) {
        if self.truncated {
            return;
        }
        let mut text = v.to_string();
        text.push('\n');
        if self.written + text.len() as u64 > self.max {
            self.truncated = true;
            let _ = writeln!(self.out, "{}", json!({"t": now(), "event": "truncated"}));
            let _ = self.out.flush();
            return;
        }
        self.written += text.len() as u64;
        // A transcript that cannot be written is given up, never the session.
        if self.out.write_all(text.as_bytes()).is_err() {
            self.truncated = true;
        }
    }

    /// A client message: what went upstream, and the client's original if it was rewritten.
    pub fn client(&mut self, sent: &[u8], original: Option<&[u8]>, changes: &[Change]) {
        let (k, v) = raw_field(sent);
        let mut line = json!({"t": now(), "dir": "c2s"});
        line[k] = v;
        if let Some(orig) = original {
            let (_, o) = raw_field(orig);
            line["original"] = o;
            line["rewrite"] = serde_json::to_value(changes).unwrap_or_default();
        }
        self.line(line);
    }

    /// A server chunk as sent to the client; streamed pieces are assembled into one message.
    pub fn server(&mut self, chunk: &Chunk, sent: &[u8]) {
        match chunk {
            Chunk::Message(_) => {
                let (k, v) = raw_field(sent);
                let mut line = json!({"t": now(), "dir": "s2c"});
                line[k] = v;
                self.line(line);
            }
            Chunk::Partial(b) | Chunk::End(b) => {
                if self.truncated {
                    return;
                }
                if self.written + (self.partial.len() + b.len()) as u64 > self.max {
                    self.partial.clear();
                    self.line(json!({"t": now(), "event": "truncated"}));
                    self.truncated = true;
                    return;
                }
                self.partial.extend_from_slice(b);
                if matches!(chunk, Chunk::End(_)) {
                    let whole = std::mem::take(&mut self.partial);
                    let (k, v) = raw_field(&whole);
                    let mut line = json!({"t": now(), "dir": "s2c"});
                    line[k] = v;
                    self.line(line);
                }
            }
        }
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn lines(dir: &std::path::Path) -> Vec<Value> {
        let file = std::fs::read_dir(dir).expect("dir").next().expect("one file").expect("entry").path();
        std::fs::read_to_string(file)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn records_messages_rewrites_and_streamed_pieces() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = RecordConfig { dir: dir.path().to_path_buf(), max_bytes: 1 << 20 };
        {
            let mut r = Recorder::create(&cfg, 7, "unix:/p.sock").expect("create");
            r.client(b"{\"id\":1}", None, &[]);
            r.client(b"{\"id\":2,\"x\":1}", Some(b"{\"id\":2}"), &[]);
            r.server(&Chunk::Partial(Bytes::from_static(b"{\"id\":")), b"{\"id\":");
            r.server(&Chunk::End(Bytes::from_static(b"1}")), b"1}");
            r.client(b"{\"a\":\"\xff\"}", None, &[]);
        }
        let l = lines(dir.path());
        assert_eq!(l[0]["event"], "open");
        assert_eq!(l[0]["session"], 7);
        assert_eq!(l[1]["raw"], "{\"id\":1}");
        assert_eq!(l[2]["original"], "{\"id\":2}");
        assert_eq!(l[3]["dir"], "s2c");
        assert_eq!(l[3]["raw"], "{\"id\":1}");
        assert_eq!(l[4]["raw_b64"], "eyJhIjoi/yJ9");
    }

    #[test]
    fn the_size_cap_ends_the_transcript() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = RecordConfig { dir: dir.path().to_path_buf(), max_bytes: 200 };
        {
            let mut r = Recorder::create(&cfg, 1, "p").expect("create");
            for _ in 0..10 {
                r.client(b"{\"method\":\"echo\",\"params\":[],\"id\":\"echo\"}", None, &[]);
            }
        }
        let l = lines(dir.path());
        assert_eq!(l.last().expect("last")["event"], "truncated");
        assert!(l.len() < 10);
    }
}
