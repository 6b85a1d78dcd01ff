//! Session transcripts (`--record DIR`): one JSON-lines file per client session, each line one
//! message exactly as relayed, with a timestamp, the direction, and — for a request the policy
//! rewrote — the client's original and the changes. `replay` plays them back.
//!
//! Line format (`t` is seconds since the Unix epoch):
//! `{"t":1700000000.123,"dir":"c2s","raw":"<message as sent upstream>"}`
//! `{"t":…,"dir":"c2s","raw":"<sent>","original":"<as the client wrote it>","rewrite":[<Change>…]}`
//! `{"t":…,"dir":"s2c","raw":"<message as sent to the client>"}`
//! `{"t":…,"event":"truncated"}` when the size cap is reached (nothing is recorded after it),
//! `{"t":…,"event":"lost","lines":N}` where N lines were dropped because the writer fell behind,
//! and a first line `{"t":…,"event":"open","session":N,"peer":"…"}`.
//! Messages that are not valid UTF-8 are stored as `"raw_b64"` instead of `"raw"`.
//!
//! **Boundary**: sessions never touch a file. Each session's [`Recorder`] formats its lines and
//! hands them to the one writer thread of a [`RecordSink`], which writes and flushes them as they
//! come (a line is on disk within a scheduling delay of being relayed, so an open session's
//! transcript can be read, and a SIGKILL loses at most the lines in flight). What is queued is
//! bounded in bytes; past the bound, lines are dropped and counted, never waited for.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
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

/// `--record-max-bytes` unless given.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Bytes of transcript lines queued for the writer thread, at most.
const MAX_QUEUED: usize = 64 << 20;

enum Msg {
    Open(u64, PathBuf),
    Line(u64, String),
    Close(u64),
    Stop,
}

/// The writer thread of every transcript, and the queue to it.
pub struct RecordSink {
    cfg: RecordConfig,
    tx: mpsc::Sender<Msg>,
    queued: Arc<AtomicUsize>,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl RecordSink {
    /// Creates the directory and starts the writer thread.
    pub fn start(cfg: RecordConfig) -> std::io::Result<Arc<RecordSink>> {
        std::fs::create_dir_all(&cfg.dir)?;
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        let thread = std::thread::Builder::new()
            .name("ovn-nb-proxy-record".into())
            .spawn(move || write_loop(rx, q))?;
        Ok(Arc::new(RecordSink {
            cfg,
            tx,
            queued,
            dropped: AtomicU64::new(0),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Lines dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes what is queued, closes every file and stops the thread (at the end of `serve`).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    fn queue_line(&self, id: u64, text: String) -> bool {
        let len = text.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > MAX_QUEUED {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if self.tx.send(Msg::Line(id, text)).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// The writer thread: writes lines in the order they come, flushes every file it wrote to
/// whenever the queue is momentarily empty.
fn write_loop(rx: mpsc::Receiver<Msg>, queued: Arc<AtomicUsize>) {
    let mut files: HashMap<u64, Option<BufWriter<File>>> = HashMap::new();
    let mut dirty: Vec<u64> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Open(id, path) => {
                    let file = match File::create(&path) {
                        Ok(f) => Some(BufWriter::new(f)),
                        Err(e) => {
                            tracing::warn!(error = %e, path = %path.display(), "cannot record this session");
                            None
                        }
                    };
                    files.insert(id, file);
                }
                Msg::Line(id, text) => {
                    queued.fetch_sub(text.len(), Ordering::AcqRel);
                    if let Some(Some(f)) = files.get_mut(&id) {
                        // A transcript that cannot be written is given up, never the session.
                        if f.write_all(text.as_bytes()).is_err() {
                            files.insert(id, None);
                        } else {
                            dirty.push(id);
                        }
                    }
                }
                Msg::Close(id) => {
                    if let Some(Some(mut f)) = files.remove(&id) {
                        let _ = f.flush();
                    }
                }
                Msg::Stop => {
                    for f in files.values_mut().flatten() {
                        let _ = f.flush();
                    }
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        for id in dirty.drain(..) {
            if let Some(Some(f)) = files.get_mut(&id) {
                let _ = f.flush();
            }
        }
    }
}

/// One session's transcript: formats lines and queues them for the writer thread.
pub struct Recorder {
    sink: Arc<RecordSink>,
    id: u64,
    written: u64,
    max: u64,
    truncated: bool,
    /// Lines dropped since the last one queued.
    lost: u64,
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
    /// Starts `DIR/session-<unix ms>-<id>.jsonl` for session `session`.
    pub fn create(sink: &Arc<RecordSink>, session: u64, peer: &str) -> Recorder {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
        let path = sink.cfg.dir.join(format!("session-{ms}-{session}.jsonl"));
        let _ = sink.tx.send(Msg::Open(session, path));
        let mut r = Recorder {
            sink: sink.clone(),
            id: session,
            written: 0,
            max: sink.cfg.max_bytes,
            truncated: false,
            lost: 0,
            partial: Vec::new(),
        };
        r.line(json!({"t": now(), "event": "open", "session": session, "peer": peer}));
        r
    }

    fn line(&mut self, v: Value) {
        if self.truncated {
            return;
        }
        if self.lost > 0 {
            let lost = json!({"t": now(), "event": "lost", "lines": self.lost});
            if self.sink.queue_line(self.id, format!("{lost}\n")) {
                self.lost = 0;
            } else {
                self.lost += 1;
                return;
            }
        }
        let mut text = v.to_string();
        text.push('\n');
        if self.written + text.len() as u64 > self.max {
            self.truncated = true;
            self.sink.queue_line(self.id, format!("{}\n", json!({"t": now(), "event": "truncated"})));
            return;
        }
        self.written += text.len() as u64;
        if !self.sink.queue_line(self.id, text) {
            self.lost += 1;
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
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.sink.tx.send(Msg::Close(self.id));
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
        let sink = RecordSink::start(RecordConfig { dir: dir.path().to_path_buf(), max_bytes: 1 << 20 })
            .expect("sink");
        {
            let mut r = Recorder::create(&sink, 7, "unix:/p.sock");
            r.client(b"{\"id\":1}", None, &[]);
            r.client(b"{\"id\":2,\"x\":1}", Some(b"{\"id\":2}"), &[]);
            r.server(&Chunk::Partial(Bytes::from_static(b"{\"id\":")), b"{\"id\":");
            r.server(&Chunk::End(Bytes::from_static(b"1}")), b"1}");
            r.client(b"{\"a\":\"\xff\"}", None, &[]);
        }
        sink.stop();
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
    fn lines_reach_the_file_while_the_session_is_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let sink = RecordSink::start(RecordConfig { dir: dir.path().to_path_buf(), max_bytes: 1 << 20 })
            .expect("sink");
        let mut r = Recorder::create(&sink, 1, "p");
        r.client(b"{\"id\":1}", None, &[]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let on_disk = || {
            let Some(Ok(entry)) = std::fs::read_dir(dir.path()).expect("dir").next() else { return 0 };
            std::fs::read_to_string(entry.path()).map(|t| t.lines().count()).unwrap_or(0)
        };
        while on_disk() < 2 {
            assert!(std::time::Instant::now() < deadline, "not on disk while open");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(r);
        sink.stop();
    }

    #[test]
    fn the_size_cap_ends_the_transcript() {
        let dir = tempfile::tempdir().expect("tmp");
        let sink =
            RecordSink::start(RecordConfig { dir: dir.path().to_path_buf(), max_bytes: 200 }).expect("sink");
        {
            let mut r = Recorder::create(&sink, 1, "p");
            for _ in 0..10 {
                r.client(b"{\"method\":\"echo\",\"params\":[],\"id\":\"echo\"}", None, &[]);
            }
        }
        sink.stop();
        let l = lines(dir.path());
        assert_eq!(l.last().expect("last")["event"], "truncated");
        assert!(l.len() < 10);
    }
}
