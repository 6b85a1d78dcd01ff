//! The boundaries ARCHITECTURE.md states, checked on the source: the library's modules form
//! layers in the order `src/lib.rs` declares them, and each imports only the layers before it
//! (so there is no circle); the pure layers touch no socket, file or process; the harness is
//! not a dependency of the product.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules, in the order `src/lib.rs` declares them: their layer.
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    lib.lines().filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';')).map(str::to_string).collect()
}

/// Every `.rs` file under `base`, with its path relative to `base`, and its text.
fn sources(base: &Path) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(base).expect("under base").to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&path).expect("read")));
            }
        }
    }
    let mut out = Vec::new();
    walk(base, base, &mut out);
    out
}

/// The text before the file's unit tests (`#[cfg(test)]`): what the product compiles.
fn product_part(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// The top-level modules a file names as `crate::X` (in `use` lists too: `crate::{X, Y}`).
fn crate_arrows(text: &str, names: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let heads: Vec<&str> = match rest.strip_prefix('{') {
            Some(list) => list[..list.find('}').unwrap_or(list.len())]
                .split(',')
                .map(|s| s.trim().split("::").next().unwrap_or(""))
                .collect(),
            None => vec![rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().unwrap_or("")],
        };
        for h in heads {
            if names.iter().any(|n| n == h) && !found.iter().any(|f: &String| f == h) {
                found.push(h.to_string());
            }
        }
    }
    found
}

#[test]
fn each_layer_imports_only_the_layers_before_it() {
    let names = layers();
    assert!(names.len() >= 6, "src/lib.rs declares the layers: {names:?}");
    let rank: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let files = sources(&src());
    let mut wrong = Vec::new();
    for (rel, text) in &files {
        let Some(own) = rel.split('/').next().map(|m| m.trim_end_matches(".rs")) else { continue };
        let Some(&own_rank) = rank.get(own) else {
            assert!(rel == "lib.rs" || rel == "main.rs", "{rel} is in no layer declared in src/lib.rs");
            continue;
        };
        for to in crate_arrows(product_part(text), &names) {
            if rank[to.as_str()] > own_rank {
                wrong.push(format!("{rel} ({own}) imports {to}, a later layer"));
            }
        }
        assert!(!text.contains("super::super::super"), "{rel} reaches out of its layer through super::");
    }
    assert!(wrong.is_empty(), "layer order is {names:?}:\n{}", wrong.join("\n"));
}

#[test]
fn the_pure_layers_touch_no_socket_file_or_process() {
    const PURE: &[&str] = &["wire", "policy", "timeline", "cache"];
    const IO: &[&str] =
        &["std::fs", "tokio::fs", "std::net::Tcp", "tokio::net", "std::os::unix::net", "std::process"];
    let files = sources(&src());
    for (rel, text) in &files {
        if PURE.iter().any(|p| rel.starts_with(&format!("{p}/")) || rel == &format!("{p}.rs")) {
            for io in IO {
                assert!(!product_part(text).contains(io), "{rel} is in a pure layer and uses {io}");
            }
        }
    }
    for p in PURE {
        assert!(layers().iter().any(|l| l == p), "{p} is a layer of src/lib.rs");
    }
}

#[test]
fn the_check_sees_a_wrong_arrow() {
    let names: Vec<String> = ["wire", "policy", "proxy"].map(String::from).to_vec();
    assert_eq!(crate_arrows("use crate::proxy::Shared;", &names), ["proxy"]);
    assert_eq!(crate_arrows("use crate::{policy::X, wire};", &names), ["policy", "wire"]);
    assert_eq!(crate_arrows("let x = crate::proxies::y;", &names), Vec::<String>::new());
    assert_eq!(product_part("use a;\n#[cfg(test)]\nuse crate::proxy;"), "use a;\n");
}

#[test]
fn the_harness_is_not_a_dependency_of_the_product() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .expect("Cargo.toml");
    let deps = manifest.split("[dependencies]").nth(1).expect("[dependencies]");
    let deps = &deps[..deps.find("\n[").unwrap_or(deps.len())];
    assert!(!deps.contains("ovn-nb-lab"), "the product depends on its harness:\n{deps}");
    let files = sources(&src());
    for (rel, text) in &files {
        assert!(!text.contains("ovn_nb_lab"), "{rel} names the harness");
    }
}

/// The code's text with string and char literals and comments blanked (braces in them do
/// not count).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        let (skip, keep_newlines) = if rest.starts_with("//") {
            (rest.find('\n').unwrap_or(rest.len()), false)
        } else if let Some(r) = rest.strip_prefix('r').filter(|r| r.starts_with('"') || r.starts_with('#')) {
            let hashes = r.len() - r.trim_start_matches('#').len();
            let close = format!("\"{}", "#".repeat(hashes));
            match r[hashes..].strip_prefix('"').and_then(|body| body.find(&close)) {
                Some(end) => (1 + hashes + 1 + end + close.len(), true),
                None => (1, false),
            }
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1, true)
        } else if let Some(body) = rest.strip_prefix('\'') {
            // A char literal ('x', '\n', '\'', '\u{1F}'), not a lifetime ('a).
            let end = match body.strip_prefix('\\') {
                Some(escaped) => escaped.get(1..).and_then(|e| e.find('\'')).map(|k| k + 2),
                None => body.char_indices().nth(1).filter(|(_, c)| *c == '\'').map(|(k, _)| k),
            };
            (end.map_or(1, |k| k + 2), false)
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        let skipped = &text[i..(i + skip).min(text.len())];
        if keep_newlines {
            out.extend(skipped.chars().filter(|c| *c == '\n'));
        }
        out.push(' ');
        i += skip.max(1);
    }
    out
}

/// Functions longer than `max` lines in `text` (its product part): (name, first line, lines).
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let code = code_only(product_part(text));
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(at) =
            line.find("fn ").filter(|&k| k == 0 || !line.as_bytes()[k - 1].is_ascii_alphanumeric())
        else {
            continue;
        };
        let name: String = line[at + 3..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let (mut depth, mut opened) = (0i32, false);
        for (j, l) in lines.iter().enumerate().skip(i) {
            for c in l.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !opened && l.trim_end().ends_with(';') {
                break;
            }
            if opened && depth <= 0 {
                if j - i + 1 > max {
                    found.push((name.clone(), i + 1, j - i + 1));
                }
                break;
            }
        }
    }
    found
}

/// A newcomer reads a function in one screen and a file in one sitting: no function over 80
/// lines and no file over 600 lines (unit tests aside) in the product or the harness.
#[test]
fn no_function_over_80_lines_and_no_file_over_600() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = ["src", "lab/src"].into_iter().flat_map(|dir| {
        sources(&root.join(dir)).into_iter().map(move |(rel, text)| (format!("{dir}/{rel}"), text))
    });
    let mut wrong = Vec::new();
    for (rel, text) in files {
        if rel.ends_with("tests.rs") || rel.ends_with("testing.rs") {
            continue;
        }
        let lines = product_part(&text).lines().count();
        if lines > 600 {
            wrong.push(format!("{rel}: {lines} lines before its tests"));
        }
        for (name, at, n) in long_functions(&text, 80) {
            wrong.push(format!("{rel}:{at}: fn {name} is {n} lines"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_size_check_sees_a_long_function() {
    let body = "    let x = \"}\";\n".repeat(81);
    let text =
        format!("fn short() {{}}\nfn long() {{\n{body}}}\n// fn not_code() {{\n#[cfg(test)]\nfn t() {{}}");
    assert_eq!(long_functions(&text, 80), vec![("long".to_string(), 2, 83)]);
    assert_eq!(code_only("a('{') b r#\"{\"# c '\\'' d<'a>"), "a( ) b   c   d< a>");
}
