//! The library's import graph, read from its sources: layers only point down and no two
//! files import each other, directly or around a circle.
//!
//! `cargo test --test architecture -- --nocapture` prints the graph, one file a line with
//! the files it imports.
//!
//! An import is any path a file names outside its own tests: `use crate::a::b`,
//! `use super::c`, `use child::d` (a submodule), or an inline `crate::a::b::f()`. It points
//! at the file that defines the longest module prefix of the path: an item re-exported by a
//! module's `mod.rs` is an import of that `mod.rs`. Declaring a submodule (`mod x;`) is not
//! an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, from the top layer down. A module may import only
/// modules of the layers below its own (never one beside it); inside a module the files
/// may import each other in one direction only.
const LAYERS: &[&[&str]] = &[
    &["api"],
    &["executor"],
    &["engine"],
    &["task_client"],
    &["metrics", "gpu", "host", "supervise", "pull_progress"],
    &["config"],
    &["keepalive", "image_ref"],
    &["task"],
    &["resources", "error_text", "metrics_text"],
];

/// One source file of the library: its module path (`executor::pool`) and its code without
/// comments, strings and unit tests.
struct File {
    module: String,
    code: String,
}

fn module_of(src: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] {
        return "crate".to_string();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments, string and char literals, and what follows its
/// `#[cfg(test)]` (the unit tests close each file).
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n'), not a lifetime ('a).
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let literal = rest.starts_with('\\') || rest.chars().nth(1) == Some('\'');
                if literal {
                    let mut escaped = false;
                    for c in chars.by_ref() {
                        match c {
                            '\\' if !escaped => escaped = true,
                            '\'' if !escaped => break,
                            _ => escaped = false,
                        }
                    }
                    out.push_str("' '");
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn library() -> Vec<File> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths.sort();
    paths
        .iter()
        // The binary (main.rs and its module ctl.rs) is above the library by construction.
        .filter(|p| !matches!(module_of(&src, p).as_str(), "main" | "ctl"))
        .map(|p| File {
            module: module_of(&src, p),
            code: code_of(&std::fs::read_to_string(p).unwrap()),
        })
        .collect()
}

/// Expands the tree of a `use` declaration (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let base = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &base, out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap().trim();
        out.push(join(prefix, path));
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}::{path}"),
    }
}

/// Every path the code names: the trees of its `use` declarations, and inline paths that
/// begin with `crate::` or `super::`.
fn paths_named(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use ") {
        let tail = &rest[at + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        expand(&tail[..end], "", &mut out);
        rest = &tail[end..];
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            if at >= 2 && &code[at - 2..at] == "::" {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            let path = code[at..end].trim_end_matches(':');
            // `super::{a, b}` is a `use` tree, read above.
            if path.contains("::") {
                out.push(path.to_string());
            }
        }
    }
    out
}

/// Where `word` begins at a word boundary (not inside `reuse `, `r#use`).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let at = from + at;
        let before = text[..at].chars().next_back();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '#')) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The module (one of `modules`) that `path`, named in `module`, lands in: the longest
/// prefix that is a module; `None` outside the library (std, other crates).
fn resolve(module: &str, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let here: Vec<&str> = if module == "crate" {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let mut base: Vec<&str> = match segments.first().copied() {
        Some("crate") => {
            segments.remove(0);
            Vec::new()
        }
        Some("self") => {
            segments.remove(0);
            here.clone()
        }
        Some("super") => {
            let mut base = here.clone();
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
            base
        }
        // A submodule of this one, named from its parent's file.
        Some(first) if modules.contains(&join(&here.join("::"), first)) => here.clone(),
        _ => return None,
    };
    let root = base.len();
    base.extend(segments);
    for len in (root..=base.len()).rev() {
        let candidate = if len == 0 {
            "crate".to_string()
        } else {
            base[..len].join("::")
        };
        if modules.contains(&candidate) {
            return Some(candidate);
        }
    }
    None
}

/// File → the files it imports.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = library();
    let modules: BTreeSet<String> = files.iter().map(|f| f.module.clone()).collect();
    files
        .iter()
        .map(|f| {
            let imports = paths_named(&f.code)
                .iter()
                .filter_map(|p| resolve(&f.module, p, &modules))
                .filter(|m| *m != f.module && m != "crate")
                .collect();
            (f.module.clone(), imports)
        })
        .collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&top(module)))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of tests/architecture.rs"))
}

/// The circles of the graph (strongly connected sets of more than one file).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Search<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in &self.graph[v] {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().rposition(|x| *x == v).unwrap();
                let set: Vec<String> = self.stack.drain(at..).map(String::from).collect();
                if set.len() > 1 {
                    self.found.push(set);
                }
            }
        }
    }
    let mut search = Search {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !search.index.contains_key(v.as_str()) {
            search.visit(v);
        }
    }
    search.found
}

fn print(graph: &BTreeMap<String, BTreeSet<String>>) {
    for (file, imports) in graph {
        let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
        println!("{file} -> {}", imports.join(" "));
    }
}

#[test]
fn layers_only_point_down() {
    let graph = graph();
    print(&graph);
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(file, imports)| imports.iter().map(move |i| (file, i)))
        .filter(|(file, import)| top(file) != top(import) && layer(import) <= layer(file))
        .map(|(file, import)| format!("{file} -> {import}"))
        .collect();
    assert!(
        upward.is_empty(),
        "imports of a module beside or above the importer's layer: {upward:#?}"
    );
}

#[test]
fn no_two_files_import_each_other() {
    let graph = graph();
    let circles = circles(&graph);
    assert!(
        circles.is_empty(),
        "files that import each other: {circles:#?}"
    );
}

#[test]
fn the_reader_sees_the_paths_a_file_names() {
    // The reader itself: a grouped `use`, an inline path, and a comment that names a
    // module but imports nothing.
    let code = code_of(
        "use super::{pool::{Pool, StartTicket}, error::ExecError};\n\
         // crate::api is only named here\n\
         fn f() { crate::metrics::Metrics::new(); let s = \"crate::host\"; }\n\
         #[cfg(test)]\nmod tests { use crate::engine::memory; }\n",
    );
    let mut paths = paths_named(&code);
    paths.sort();
    assert_eq!(
        paths,
        [
            "crate::metrics::Metrics::new",
            "super::error::ExecError",
            "super::pool::Pool",
            "super::pool::StartTicket",
        ]
    );
    let modules: BTreeSet<String> = ["executor", "executor::pool", "executor::error", "metrics"]
        .map(String::from)
        .into();
    assert_eq!(
        resolve("executor::room", "super::pool::Pool", &modules).as_deref(),
        Some("executor::pool")
    );
    assert_eq!(
        resolve("executor::room", "super::ExecError", &modules).as_deref(),
        Some("executor")
    );
    assert_eq!(
        resolve("executor", "pool::Pool", &modules).as_deref(),
        Some("executor::pool")
    );
    assert_eq!(resolve("executor", "std::sync::Arc", &modules), None);
}
