//! Unit-test helpers shared by the replay modules: uuids, and JSON written with placeholders
//! for them.

use serde_json::Value;

pub(super) const U1: &str = "11111111-1111-1111-1111-111111111111";
pub(super) const U2: &str = "22222222-2222-2222-2222-222222222222";
pub(super) const U3: &str = "33333333-3333-3333-3333-333333333333";
pub(super) const A: &str = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa";
pub(super) const B: &str = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb";
pub(super) const C: &str = "cccccccc-cccc-cccc-cccc-cccccccccccc";

/// `{1}` `{2}` `{3}` stand for recorded uuids, `{a}` `{b}` `{c}` for live ones.
pub(super) fn j(text: &str) -> Value {
    let text = text
        .replace("{1}", U1)
        .replace("{2}", U2)
        .replace("{3}", U3)
        .replace("{a}", A)
        .replace("{b}", B)
        .replace("{c}", C);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad test JSON {text}: {e}"))
}
