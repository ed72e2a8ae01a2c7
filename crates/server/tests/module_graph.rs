//! The server's modules depend on each other one way: no cycle among the top-level modules
//! of `crates/server/src`, read from the `crate::name` paths of the code (comments left
//! out). Two modules in a cycle cannot be read, changed or tested apart; a cycle is cut with
//! a narrow trait the lower module owns, as `outbound::ProgressSink` (writers report
//! progress) and `cluster::IncomingSink` (the bus hands the hub what it hears) do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Dependencies that still close a cycle, each with the reason it is left and the cut that
/// would remove it. The test fails if one of these is gone (take it off the list) and if
/// any other edge closes a cycle.
const KNOWN: &[(&str, &str, &str)] = &[];

/// Every top-level module of `src` and the modules its code names as `crate::name`.
fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let code = std::fs::read_to_string(&path).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (at, _) in line.match_indices("crate::") {
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // `parley_crate::`, say: not this crate
                }
                let name: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle of `graph`, as the modules along it (the first repeated at the end), if any.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        node: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).expect("on the path");
                let mut found = path[start..].to_vec();
                found.push(node.to_string());
                return Some(found);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(graph, next, marks, path) {
                return Some(found);
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut marks, &mut Vec::new()))
}

#[test]
fn the_server_modules_depend_on_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = graph(&src);
    // The reader sees the code: the hub's store and the sessions' hub are there.
    assert!(graph["hub"].contains("store") && graph["session"].contains("hub"));
    for (from, to, why) in KNOWN {
        let uses = graph.get_mut(*from).expect("a module");
        assert!(
            uses.remove(*to),
            "{from} no longer uses {to}: take it off KNOWN ({why})"
        );
    }
    if let Some(found) = cycle(&graph) {
        panic!(
            "a module cycle: {} (the modules' dependencies: {graph:#?})",
            found.join(" → ")
        );
    }
}

#[test]
fn a_cycle_is_found_where_there_is_one() {
    let edges = |list: &[(&str, &str)]| {
        let mut graph = Graph::new();
        for (from, to) in list {
            graph
                .entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            graph.entry(to.to_string()).or_default();
        }
        graph
    };
    let one_way = edges(&[("server", "session"), ("session", "hub"), ("hub", "store")]);
    assert_eq!(cycle(&one_way), None);
    let round = edges(&[("session", "hub"), ("hub", "cluster"), ("cluster", "hub")]);
    assert_eq!(
        cycle(&round),
        Some(vec!["cluster".into(), "hub".into(), "cluster".into()])
    );
}
