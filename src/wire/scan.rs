//! A resumable scanner that finds where one JSON object ends in a byte stream.
//!
//! The state (nesting depth, inside a string, after a backslash) survives across calls, so a
//! message split at any byte — inside a UTF-8 sequence, right after a backslash — is scanned
//! once, never from the start again. It works on bytes: OVSDB servers relay invalid UTF-8
//! untouched, so the framer must not require valid UTF-8.

use memchr::memchr2;

/// Why a stream is not a sequence of JSON objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// ovsdb-server drops such a connection too ("message is not a JSON object").
    #[error("message does not start with '{{' (found byte 0x{0:02x}); OVSDB messages are JSON objects")]
    NotAnObject(u8),
}

/// The deepest nesting of arrays and objects in a JSON text (0 for a scalar), counted without
/// recursion. Strings are skipped, brackets inside them do not count.
pub fn max_depth(json: &[u8]) -> usize {
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    while i < json.len() {
        match json[i] {
            b'"' => {
                // Skip to the closing quote, stepping over escaped bytes.
                i += 1;
                while i < json.len() {
                    let Some(off) = memchr2(b'"', b'\\', &json[i..]) else { return max };
                    i += off;
                    if json[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    max
}

/// Scanner state between reads.
#[derive(Debug, Default, Clone)]
pub struct Scanner {
    depth: u32,
    in_string: bool,
    escape: bool,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when a message has started (its `{` was seen) and has not ended yet.
    pub fn in_message(&self) -> bool {
        self.depth > 0
    }

    /// Scans `buf`, which continues the bytes given to earlier calls. Returns
    /// `Some(n)` when the current message ends at `buf[n - 1]`; the scanner is then reset for the
    /// next message. Returns `None` when `buf` ends before the message does. Whitespace before a
    /// message is skipped (libovsdb writes a newline after each message).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ScanError> {
        let mut i = 0;
        let n = buf.len();
        while i < n {
            if self.in_string {
                if self.escape {
                    // The byte after a backslash never ends the string, whatever it is.
                    self.escape = false;
                    i += 1;
                    continue;
                }
                match memchr2(b'"', b'\\', &buf[i..]) {
                    None => return Ok(None),
                    Some(off) => {
                        i += off;
                        if buf[i] == b'\\' {
                            self.escape = true;
                        } else {
                            self.in_string = false;
                        }
                        i += 1;
                    }
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            match b {
                // A string outside any object is not a message: refused like any other byte.
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == 0 && b != b'{' {
                        return Err(ScanError::NotAnObject(b));
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Err(ScanError::NotAnObject(b));
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some(i));
                    }
                }
                b' ' | b'\t' | b'\n' | b'\r' => {}
                _ if self.depth == 0 => return Err(ScanError::NotAnObject(b)),
                _ => {}
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at every `split` points and returns the message end offsets.
    fn ends(input: &[u8], splits: &[usize]) -> Result<Vec<usize>, ScanError> {
        let mut s = Scanner::new();
        let mut out = Vec::new();
        let mut bounds: Vec<usize> = splits.to_vec();
        bounds.push(input.len());
        let mut from = 0; // start of the unscanned part
        for &to in &bounds {
            let mut pos = from;
            while pos < to {
                match s.scan(&input[pos..to])? {
                    Some(n) => {
                        out.push(pos + n);
                        pos += n;
                    }
                    None => pos = to,
                }
            }
            from = to;
        }
        Ok(out)
    }

    #[test]
    fn max_depth_counts_brackets_outside_strings() {
        for (json, want) in [
            (&b"1"[..], 0),
            (b"[]", 1),
            (br#"{"a":[[1],{"b":[]}]}"#, 4),
            (br#"["[[[[", "\"[[", {"k": "]]]]"}]"#, 2),
            (br#"["unterminated \"#, 1),
            (br#""\"#, 0),
        ] {
            assert_eq!(max_depth(json), want, "{}", String::from_utf8_lossy(json));
        }
        let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(max_depth(deep.as_bytes()), 5000);
    }

    #[test]
    fn table() {
        // (input, message end offsets)
        let cases: &[(&str, &[usize])] = &[
            (r#"{}"#, &[2]),
            (r#"{"a":"}"}"#, &[9]),
            (r#"{"a":"\"}"}"#, &[11]),
            (r#"{"a":"\\"}{}"#, &[10, 12]),
            (r#"{"a":"\\\"{"}"#, &[13]),
            (r#"{"a":["{[",{"b":"]"}]}"#, &[22]),
            ("{}\n{}\n", &[2, 5]),
            (" \r\n\t{\"x\":1}", &[11]),
            (r#"{"id":"echo","method":"echo","params":[]}{"id":[1,2],"result":[]}"#, &[41, 65]),
            ("{\"é\":\"ü{\"}", &[12]),
            (r#"{"a":"#, &[]),
        ];
        for (input, want) in cases {
            assert_eq!(ends(input.as_bytes(), &[]).as_deref(), Ok(*want), "input {input:?}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_boundaries() {
        let input = "{\"a\":\"x\\\\\\\"}{é\",\"b\":[1,{\"c\":\"]\"}]}\n{\"id\":\"echo\"}".as_bytes();
        let whole = ends(input, &[]).expect("valid");
        assert_eq!(whole.len(), 2);
        for i in 0..input.len() {
            for j in i..input.len() {
                assert_eq!(ends(input, &[i, j]).expect("valid"), whole, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn rejects_non_objects_at_top_level() {
        assert_eq!(ends(b"[1,2,3]", &[]), Err(ScanError::NotAnObject(b'[')));
        assert_eq!(ends(b"{} 42", &[]), Err(ScanError::NotAnObject(b'4')));
        assert_eq!(ends(b"}", &[]), Err(ScanError::NotAnObject(b'}')));
        // A top-level string is refused too, not skipped like whitespace (found by fuzzing).
        assert_eq!(ends(b"\"x\"{}", &[]), Err(ScanError::NotAnObject(b'"')));
        assert_eq!(ends(b"{} \"{}", &[]), Err(ScanError::NotAnObject(b'"')));
    }

    #[test]
    fn invalid_utf8_is_just_bytes() {
        assert_eq!(ends(b"{\"a\":\"\xff\xfe\"}", &[]), Ok(vec![10]));
    }
}
