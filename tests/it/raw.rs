//! Raw JSON-RPC through the proxy: ids of any JSON type, several messages per write, one
//! message over many writes, big transactions, the frame limit, and byte-for-byte relaying.

use crate::common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use serde_json::json;

#[test]
fn echo_with_an_array_id_is_answered_by_the_server() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let mut c = Raw::connect(&p.unix);
    c.send(br#"{"method":"echo","params":["x",{"y":[1]}],"id":[1,"a",{"b":null}]}"#);
    let reply = c.recv();
    assert_eq!(reply, json!({"id":[1,"a",{"b":null}],"result":["x",{"y":[1]}],"error":null}));
    // The string id "echo" that the C and Python IDLs use, and libovsdb's numbers.
    c.send(br#"{"id":"echo","method":"echo","params":[]}"#);
    assert_eq!(c.recv()["id"], json!("echo"));
    c.send(
        b"{\"method\":\"echo\",\"params\":[\"libovsdb echo\",\"1700000000\"],\"id\":18446744073709551615}\n",
    );
    let r = c.recv();
    assert_eq!(r["result"], json!(["libovsdb echo", "1700000000"]));
}

#[test]
fn two_requests_in_one_write_get_two_replies() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let mut c = Raw::connect(&p.unix);
    c.send(br#"{"method":"list_dbs","params":[],"id":1}{"method":"echo","params":["}{\"]"],"id":"s1"}"#);
    let a = c.recv();
    let b = c.recv();
    assert_eq!(a["id"], json!(1));
    assert_eq!(a["result"], json!(["OVN_Northbound", "_Server"]));
    assert_eq!(b, json!({"id":"s1","result":["}{\"]"],"error":null}));
}

#[test]
fn one_request_over_many_writes_is_reassembled() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let mut c = Raw::connect(&p.unix);
    let msg = "{\"method\":\"echo\",\"params\":[\"é\\\"\\\\\",\"ü\"],\"id\":7}\n".as_bytes();
    for b in msg.chunks(1) {
        c.send(b);
        c.stream.flush().expect("flush");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(c.recv(), json!({"id":7,"result":["é\"\\","ü"],"error":null}));
}

#[test]
fn a_20_mb_transaction_commits() {
    let nb = nb();
    let p = Proxy::start(&nb.server.unix_remote(), &[]);
    let blob = "x".repeat(1 << 20);
    let mut params = vec![json!("OVN_Northbound")];
    for i in 0..20 {
        params.push(json!({"op":"insert","table":"Logical_Switch",
            "row":{"name":format!("big{i}"),"external_ids":["map",[["blob",blob]]]}}));
    }
    let req = serde_json::to_vec(&json!({"method":"transact","params":params,"id":42})).expect("json");
    assert!(req.len() > 20_000_000);
    let mut c = Raw::connect(&p.unix);
    c.send(&req);
    let reply = c.recv();
    assert_eq!(reply["id"], json!(42));
    let results = reply["result"].as_array().expect("result array");
    assert_eq!(results.len(), 20);
    assert!(results.iter().all(|r| r.get("uuid").is_some()), "{:.200}", reply.to_string());
    let names = ovn_nbctl(&nb.server.unix_remote(), &["--bare", "--columns=name", "list", "Logical_Switch"])
        .expect("list");
    assert_eq!(names.lines().filter(|l| l.starts_with("big")).count(), 20);
}

#[test]
fn an_oversized_frame_disconnects_only_its_client() {
    let nb = nb();
    let mut p = Proxy::start(&nb.server.unix_remote(), &["--max-frame-size=1048576"]);
    let mut good = Raw::connect(&p.unix);
    good.send(br#"{"method":"echo","params":[],"id":1}"#);
    assert_eq!(good.recv()["id"], json!(1));

    let mut bad = Raw::connect(&p.unix);
    let big = json!({"method":"transact","id":2,"params":["OVN_Northbound",
        {"op":"insert","table":"Logical_Switch","row":{"name":"too-big","external_ids":["map",[["b","y".repeat(2 << 20)]]]}}]});
    // The proxy may close while we are still writing: a write error is fine here.
    let _ = bad.stream.write_all(&serde_json::to_vec(&big).expect("json"));
    let mut rest = Vec::new();
    let _ = bad.stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no reply for an oversized message");
    p.wait_log("frame limit", Duration::from_secs(5));

    good.send(br#"{"method":"echo","params":["still here"],"id":3}"#);
    assert_eq!(good.recv()["result"], json!(["still here"]));
    assert!(p.is_running());
    let names = ovn_nbctl(&nb.server.unix_remote(), &["ls-list"]).expect("ls-list");
    assert!(!names.contains("too-big"), "nothing of the oversized transaction reached the database");
}

#[test]
fn a_non_object_message_disconnects_only_its_client() {
    let nb = nb();
    let mut p = Proxy::start(&nb.server.unix_remote(), &[]);
    let mut bad = Raw::connect(&p.unix);
    bad.send(b"[1,2,3]");
    assert!(bad.read_to_end().is_empty());
    p.wait_log("not start with '{'", Duration::from_secs(5));
    let mut good = Raw::connect(&p.unix);
    good.send(br#"{"method":"list_dbs","params":[],"id":0}"#);
    assert_eq!(good.recv()["id"], json!(0));
}

/// An upstream that records every byte it gets and plays back fixed bytes: the only way to see
/// exactly what the proxy writes to a server.
/// With `until_eof`, it keeps reading after its reply until the client side closes; without,
/// it closes first.
fn recording_upstream(
    dir: &std::path::Path,
    reply: Vec<Vec<u8>>,
    until_eof: bool,
) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let path = dir.join("recording.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let handle = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The proxy's own connections are not the client's: its start-up reachability probe
        // connects and leaves without a word, and its port monitor opens with a
        // `monitor_cond` of its own. Skip both (keeping the monitor's open, or it would
        // reconnect). Then wait for the client's first message, answer piece by piece, and
        // read until EOF.
        let mut own = Vec::new();
        let mut s = loop {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            got.clear();
            while !got.ends_with(b"}") {
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if String::from_utf8_lossy(&got).contains("\"ovn-nb-proxy\"") {
                own.push(s);
                continue;
            }
            if !got.is_empty() {
                break s;
            }
        };
        for piece in reply {
            s.write_all(&piece).expect("write");
            std::thread::sleep(Duration::from_millis(5));
        }
        if until_eof {
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        }
        got
    });
    (format!("unix:{}", path.display()), handle)
}

#[test]
fn messages_are_relayed_byte_for_byte_both_ways() {
    let dir = tempfile::tempdir().expect("tmp");
    let server_bytes: Vec<Vec<u8>> = vec![
        br#"{"id":{"k":[1, 2]},"result":["a\"b"],  "error":null}{"id":"#.to_vec(),
        b"null,\"method\":\"update3\",\"params\":[\"\xc3".to_vec(),
        b"\xa9\",\"\\\\\",{}]}".to_vec(),
    ];
    let (upstream, rec) = recording_upstream(dir.path(), server_bytes.clone(), true);
    let p = Proxy::start(&upstream, &[]);
    let mut c = Raw::connect(&p.unix);
    let first = b"  {\"method\":\"echo\" , \"params\":[ \"a\\\"b\" ],\"id\":{\"k\":[1, 2]}}".to_vec();
    c.send(&first);
    let expected_down: Vec<u8> = server_bytes.concat();
    let mut down = Vec::new();
    while down.len() < expected_down.len() {
        let mut buf = [0u8; 4096];
        let n = c.stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        down.extend_from_slice(&buf[..n]);
    }
    assert_eq!(down, expected_down, "server → client bytes");
    let second = b"\n{\"id\":\"echo\",\"result\":[],\"error\":null}".to_vec();
    c.send(&second);
    c.stream.shutdown(std::net::Shutdown::Write).expect("half-close");
    let got = rec.join().expect("recorder");
    assert_eq!(got, [first, second].concat(), "client → server bytes");
}

#[test]
fn when_the_server_closes_the_client_is_closed() {
    let dir = tempfile::tempdir().expect("tmp");
    let reply = b"{\"id\":1,\"result\":[],\"error\":null}".to_vec();
    let (upstream, rec) = recording_upstream(dir.path(), vec![reply], false);
    let p = Proxy::start(&upstream, &[]);
    let mut c = Raw::connect(&p.unix);
    c.send(br#"{"method":"list_dbs","params":[],"id":1}"#);
    // What the server sent before closing still arrives, then the end of the stream.
    assert_eq!(c.recv()["id"], json!(1));
    rec.join().expect("recorder");
    assert!(c.read_to_end().is_empty(), "the proxy closes the client after the server closed");
}
