//! Every example in `config/` is valid, and adding an unknown key to any of
//! its tables is rejected (so a typo can never be silently ignored).

#![allow(clippy::unwrap_used)] // tests fail loudly on the unexpected

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};
use strait::config::{load_file, parse_str, MapOverrides};
use strait::discovery::translate;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "examples in {}", dir.display());
    files
}

#[test]
fn every_example_config_loads_and_translates() {
    for path in examples() {
        let loaded = load_file(&path, &MapOverrides::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        translate(&loaded.config, &loaded.manifests)
            .unwrap_or_else(|p| panic!("{}: {p:?}", path.display()));
    }
}

/// Paths of every mapping in `v` that is a schema table (not a free-form map
/// such as labels or annotations).
fn tables(v: &Value, path: Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Mapping(m) => {
            let free_form = matches!(
                path.last().and_then(Value::as_str),
                Some("labels" | "annotations")
            );
            if !free_form {
                out.push(path.clone());
            }
            for (k, child) in m {
                let mut p = path.clone();
                p.push(k.clone());
                tables(child, p, out);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut p = path.clone();
                p.push(Value::from(i as u64));
                tables(child, p, out);
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Mapping {
    let mut cur = v;
    for k in path {
        cur = match (cur, k) {
            (Value::Mapping(m), k) => m.get_mut(k).unwrap(),
            (Value::Sequence(s), Value::Number(n)) => &mut s[n.as_u64().unwrap() as usize],
            _ => unreachable!(),
        };
    }
    match cur {
        Value::Mapping(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn an_unknown_key_in_any_table_of_any_example_is_rejected() {
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        let root: Value = serde_yaml_ng::from_str(&text).unwrap();
        let mut all = Vec::new();
        tables(&root, vec![], &mut all);
        assert!(all.len() > 5, "{}", path.display());
        for table in all {
            let mut v = root.clone();
            at(&mut v, &table).insert(Value::from("unknownKeyForTest"), Value::from(1));
            let text = serde_yaml_ng::to_string(&v).unwrap();
            let base = path.parent().unwrap();
            let result = parse_str(&text, base, &MapOverrides::default());
            let err = match result {
                Ok(_) => panic!("{}: unknown key accepted at {table:?}", path.display()),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("unknownKeyForTest"),
                "{}: {err}",
                path.display()
            );
        }
    }
}
