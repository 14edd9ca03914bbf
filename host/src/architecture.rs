//! A test of the crate's shape: the modules' uses of each other (`crate::` and `super::`
//! paths, outside tests) form no cycle, so each layer can be read, tested and changed
//! without the ones that use it. A module using its own ancestors (`super::`) is the
//! ordinary parent-child relation and does not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path ("engine::trainer") -> the module's source, tests cut off.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                parts.clear();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_owned();
            found.insert(parts.join("::"), code);
        }
    }
    found
}

/// The module a path names: the longest known module prefix of it.
fn resolve(from: &str, path: &[&str], known: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() { Vec::new() } else { from.split("::").collect() };
    let mut rest = path;
    match rest.first() {
        Some(&"crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some(&"super") => {
            while rest.first() == Some(&"super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    (0..=rest.len())
        .rev()
        .map(|n| base.iter().chain(&rest[..n]).copied().collect::<Vec<_>>().join("::"))
        .find(|candidate| known.contains(candidate))
}

/// Every `crate::`/`super::` path in the code, with `{a, b::c}` groups expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = code[i..].starts_with("crate::") || code[i..].starts_with("super::");
        let boundary =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        if !(starts && boundary) {
            i += 1;
            continue;
        }
        let (prefix, end) = read_path(&code, i);
        if code[end..].starts_with("::{") {
            let close = matching_brace(&code, end + 2);
            expand_group(&prefix, &code[end + 3..close], &mut out);
            i = close;
        } else {
            out.push(prefix);
            i = end;
        }
    }
    out
}

/// The paths of a `use` group's items (`a, b::{c, d}`) under `prefix`.
fn expand_group(prefix: &[String], group: &str, out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (j, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once("::{") {
            Some((path, inner)) => {
                let mut nested = prefix.to_vec();
                nested.extend(path.split("::").map(|p| p.trim().to_owned()));
                expand_group(&nested, inner.strip_suffix('}').unwrap_or(inner), out);
            }
            None => {
                let mut path = prefix.to_vec();
                path.extend(item.split(" as ").next().unwrap_or(item).split("::").map(|p| p.trim().to_owned()));
                out.push(path);
            }
        }
    }
}

/// The identifiers of the path starting at `start`, and where it ends.
fn read_path(code: &str, start: usize) -> (Vec<String>, usize) {
    let mut end = start;
    let bytes = code.as_bytes();
    loop {
        let ident_end = (end..bytes.len())
            .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
            .unwrap_or(bytes.len());
        if ident_end == end {
            break;
        }
        end = ident_end;
        let next_is_ident = bytes.get(end + 2).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
        if code[end..].starts_with("::") && next_is_ident {
            end += 2;
        } else {
            break;
        }
    }
    (code[start..end].split("::").map(str::to_owned).collect(), end)
}

fn matching_brace(code: &str, open: usize) -> usize {
    let mut depth = 0;
    for (j, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + j;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// The module graph's cycles (its strongly connected components of more than one module).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(node.to_owned()) {
            return;
        }
        for next in &edges[node] {
            visit(next, edges, seen, order);
        }
        order.push(node.to_owned());
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for node in edges.keys() {
        visit(node, edges, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<String, BTreeSet<String>> = edges.keys().map(|k| (k.clone(), BTreeSet::new())).collect();
    for (from, tos) in edges {
        for to in tos {
            reversed.get_mut(to).unwrap().insert(from.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut found = Vec::new();
    for node in order.iter().rev() {
        let mut component = Vec::new();
        visit(node, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            found.push(component);
        }
    }
    found
}

/// The graph of uses between the crate's modules.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = known.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (module, code) in &modules {
        for path in paths(code) {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let Some(target) = resolve(module, &path, &known) else { continue };
            let ancestor = module.starts_with(&format!("{target}::")) || target.is_empty();
            let descendant = target.starts_with(&format!("{module}::")) || module.is_empty();
            if target != *module && !ancestor && !descendant {
                edges.get_mut(module).unwrap().insert(target);
            }
        }
    }
    edges
}

#[test]
fn the_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.contains_key("engine::trainer") && graph["engine::trainer"].contains("engine::optim"));
    assert_eq!(cycles(&graph), Vec::<Vec<String>>::new(), "modules that use each other in a cycle");
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
            .collect();
    assert_eq!(cycles(&graph), vec![vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]]);
    let paths = paths("use crate::{engine::{data::{self, Batch}, optim}, error};\nlet x = super::super::y::z(1);");
    assert!(paths.contains(&vec!["crate".into(), "engine".into(), "data".into(), "self".into()]), "{paths:?}");
    assert!(paths.contains(&vec!["crate".into(), "engine".into(), "data".into(), "Batch".into()]), "{paths:?}");
    assert!(paths.contains(&vec!["crate".into(), "engine".into(), "optim".into()]), "{paths:?}");
    assert!(paths.contains(&vec!["crate".into(), "error".into()]), "{paths:?}");
    assert!(paths.contains(&vec!["super".into(), "super".into(), "y".into(), "z".into()]), "{paths:?}");
}
