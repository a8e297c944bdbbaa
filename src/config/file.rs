//! Reading a config file (and its manifest directory) into a validated
//! [`Loaded`]: YAML syntax, unknown keys, types and ranges are all reported as
//! [`Problem`]s with field paths, as many as can be found in one pass.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::{overrides, Config, Error, Overrides, Problem};
use crate::discovery::manifest::{self, Manifest};

/// A manifest and where it came from (`mesh[3]`, `manifests/a.yaml[1]`).
#[derive(Debug, Clone)]
pub struct Sourced {
    pub source: String,
    pub manifest: Manifest,
}

/// A parsed, validated configuration and the manifests it names.
/// The manifests are translated into a snapshot by [`crate::discovery`].
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub manifests: Vec<Sourced>,
    /// The file it came from, if any (hot reload watches it).
    pub path: Option<PathBuf>,
}

/// Reads and validates `path`. Does not translate the mesh state; see
/// [`crate::discovery::translate`].
pub fn load_file(path: &Path, overrides: &dyn Overrides) -> Result<Loaded, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut loaded = parse_str(&text, base, overrides)?;
    loaded.path = Some(path.to_owned());
    Ok(loaded)
}

/// Parses config text; relative `meshDir` paths are resolved against `base`.
pub fn parse_str(text: &str, base: &Path, overrides: &dyn Overrides) -> Result<Loaded, Error> {
    let mut problems = Vec::new();
    let root: Value = match serde_yaml_ng::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => return Err(Error::Invalid(vec![Problem::new("", format!("YAML: {e}"))])),
    };
    let Value::Mapping(mut root) = root else {
        return Err(Error::Invalid(vec![Problem::new(
            "",
            "the config must be a YAML mapping",
        )]));
    };

    let inline = root.remove("mesh");
    let mut config = match serde_path_to_error::deserialize::<_, Config>(Value::Mapping(root)) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(path_problem("", e));
            None
        }
    };

    let mut manifests = Vec::new();
    match inline {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                collect(format!("mesh[{i}]"), item, &mut manifests, &mut problems);
            }
        }
        Some(_) => problems.push(Problem::new(
            "mesh",
            "must be a list of Kubernetes resources",
        )),
    }

    if let Some(config) = config.as_mut() {
        overrides::apply(config, overrides);
        if let Some(dir) = config.mesh_dir.as_mut() {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
            read_dir(dir, &mut manifests, &mut problems);
        }
        if let Some(identity) = config.identity.as_mut() {
            for path in [
                &mut identity.cert_chain,
                &mut identity.private_key,
                &mut identity.trust_bundle,
            ] {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        problems.extend(config.validate());
    }

    match config {
        Some(config) if problems.is_empty() => Ok(Loaded {
            config,
            manifests,
            path: None,
        }),
        _ => Err(Error::Invalid(problems)),
    }
}

/// Reads every manifest file directly in `dir`, in name order. Hidden entries
/// (Kubernetes' `..data` symlink farm) are skipped; the files themselves may
/// be symlinks.
fn read_dir(dir: &Path, out: &mut Vec<Sourced>, problems: &mut Vec<Problem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(Problem::new("meshDir", format!("{}: {e}", dir.display())));
            return;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            let ext = p.extension().and_then(|e| e.to_str());
            !hidden && matches!(ext, Some("yaml" | "yml" | "json")) && p.is_file()
        })
        .collect();
    files.sort();
    for file in files {
        let shown = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::new(shown, e.to_string()));
                continue;
            }
        };
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            match Value::deserialize(doc) {
                Ok(Value::Null) => {}
                Ok(v) => collect(format!("{shown}[{i}]"), v, out, problems),
                Err(e) => {
                    problems.push(Problem::new(format!("{shown}[{i}]"), format!("YAML: {e}")));
                    // A syntax error ends the document stream.
                    break;
                }
            }
        }
    }
}

/// Parses one resource (expanding `kind: List`).
fn collect(source: String, value: Value, out: &mut Vec<Sourced>, problems: &mut Vec<Problem>) {
    if value.get("kind").and_then(Value::as_str) == Some("List") {
        if let Some(Value::Sequence(items)) = value.get("items") {
            for (i, item) in items.iter().enumerate() {
                collect(format!("{source}.items[{i}]"), item.clone(), out, problems);
            }
            return;
        }
    }
    match manifest::parse(value) {
        Ok(manifest) => out.push(Sourced { source, manifest }),
        Err(e) => problems.push(e.at(&source)),
    }
}

fn path_problem(prefix: &str, e: serde_path_to_error::Error<serde_yaml_ng::Error>) -> Problem {
    let path = e.path().to_string();
    let path = match (prefix.is_empty(), path.as_str()) {
        (_, ".") => prefix.to_owned(),
        (true, p) => p.to_owned(),
        (false, p) => format!("{prefix}.{p}"),
    };
    Problem::new(path, e.into_inner().to_string())
}
