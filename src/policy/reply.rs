//! Reply fix-up for transactions the proxy appended ops to (RFC 7047 §4.1.3 result arrays).

use serde_json::Value;

fn is_error(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.contains_key("error"))
}

/// The shape of a rewritten transaction's reply: the client sent `client_ops` ops, the server
/// ran `upstream_ops` (the proxy's appended after them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    pub client_ops: usize,
    pub upstream_ops: usize,
}

impl Trim {
    /// The server's `result` in the shape the client expects: see [`map_result`].
    pub fn apply(&self, result: &Value) -> Value {
        map_result(result, self.client_ops, self.upstream_ops)
    }
}

/// Maps the server's `result` for `upstream_ops` ops back to the shape the client expects for its
/// `client_ops` ops:
/// * success, or a client op failed: the first `client_ops` elements;
/// * commit failure (`upstream_ops + 1` elements), or an appended op failed: the first
///   `client_ops` elements plus that error, i.e. the "all ops ok, commit failed" shape.
///
/// A result that is not an array, or a transaction with nothing appended, is returned unchanged.
fn map_result(result: &Value, client_ops: usize, upstream_ops: usize) -> Value {
    let Some(items) = result.as_array() else {
        return result.clone();
    };
    if upstream_ops <= client_ops {
        return result.clone();
    }
    let head = &items[..client_ops.min(items.len())];
    let tail_error = if items.len() > upstream_ops {
        items.get(upstream_ops)
    } else {
        items.get(client_ops..).and_then(|appended| appended.iter().find(|v| is_error(v)))
    };
    let client_failed = head.iter().any(is_error);
    let mut out = head.to_vec();
    if let (false, Some(err)) = (client_failed, tail_error) {
        out.push(err.clone());
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cases() {
        let e = |s: &str| json!({"error": s, "details": "d"});
        let cases: Vec<(&str, Value, usize, usize, Value)> = vec![
            ("success", json!([{"count": 1}, {}, {"count": 1}]), 2, 3, json!([{"count": 1}, {}])),
            (
                "client op failed, tail nulls",
                json!([{"count": 1}, e("constraint violation"), null, null]),
                3,
                4,
                json!([{"count": 1}, e("constraint violation"), null]),
            ),
            ("first op failed", json!([e("timed out"), null, null]), 2, 3, json!([e("timed out"), null])),
            (
                "commit failure",
                json!([{"uuid": ["uuid", "x"]}, {}, {"count": 1}, e("constraint violation")]),
                2,
                3,
                json!([{"uuid": ["uuid", "x"]}, {}, e("constraint violation")]),
            ),
            (
                "appended op failed",
                json!([{"count": 1}, {}, e("referential integrity violation"), null]),
                2,
                4,
                json!([{"count": 1}, {}, e("referential integrity violation")]),
            ),
            (
                "second appended op failed",
                json!([{"count": 1}, {"count": 1}, e("constraint violation")]),
                1,
                3,
                json!([{"count": 1}, e("constraint violation")]),
            ),
            ("nothing appended", json!([{"count": 1}, e("x")]), 1, 1, json!([{"count": 1}, e("x")])),
            ("not an array", json!({"error": "x"}), 1, 2, json!({"error": "x"})),
            ("null result", Value::Null, 1, 2, Value::Null),
            ("short result", json!([{"count": 1}]), 2, 3, json!([{"count": 1}])),
        ];
        for (name, result, n, m, want) in cases {
            assert_eq!(map_result(&result, n, m), want, "{name}");
        }
    }
}
