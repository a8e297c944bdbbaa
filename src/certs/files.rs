//! Reading certificate directories and writing output files: refuse to
//! overwrite without `--force` (checked for every file before any is
//! written), keys readable by the owner only, and each file replaced by an
//! atomic rename so a proxy watching the directory never reads half a file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::CertsError;

/// Who may read a file written by [`Output::write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Certificates: 0644.
    Public,
    /// Keys and Secrets holding them: 0600.
    Private,
}

/// The files one command writes into one directory.
pub(super) struct Output {
    dir: PathBuf,
    files: Vec<(&'static str, String, Mode)>,
}

// === impl Output ===

impl Output {
    pub(super) fn new(dir: &Path) -> Self {
        Output {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, name: &'static str, contents: String, mode: Mode) {
        self.files.push((name, contents, mode));
    }

    /// Writes every file, or none if one exists and `force` is off; returns
    /// the paths written, in order.
    pub(super) fn write(self, force: bool) -> Result<Vec<PathBuf>, CertsError> {
        let names: Vec<&str> = self.files.iter().map(|(n, ..)| *n).collect();
        refuse_overwrite(&self.dir, &names, force)?;
        let paths: Vec<PathBuf> = names.iter().map(|n| self.dir.join(n)).collect();
        fs::create_dir_all(&self.dir).map_err(|source| CertsError::Write {
            path: self.dir.clone(),
            source,
        })?;
        for ((_, contents, mode), path) in self.files.iter().zip(&paths) {
            write_atomically(path, contents.as_bytes(), *mode).map_err(|source| {
                CertsError::Write {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(paths)
    }
}

/// Fails when `force` is off and one of `dir/names` exists. Commands call
/// it before generating anything; [`Output::write`] checks again.
pub(super) fn refuse_overwrite(dir: &Path, names: &[&str], force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    match names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.symlink_metadata().is_ok())
    {
        Some(path) => Err(CertsError::Exists { path }),
        None => Ok(()),
    }
}

/// Reads `dir/name` as text, naming the path on failure.
pub(super) fn read(dir: &Path, name: &str) -> Result<(String, String), CertsError> {
    let path = dir.join(name);
    let text = fs::read_to_string(&path).map_err(|source| CertsError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((text, path.display().to_string()))
}

fn write_atomically(path: &Path, contents: &[u8], mode: Mode) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // A leftover from an interrupted run may have other permissions; start afresh.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = (|| {
        let mut file = open_new(&tmp, mode)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn open_new(path: &Path, mode: Mode) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let bits = match mode {
        Mode::Public => 0o644,
        Mode::Private => 0o600,
    };
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(bits)
        .open(path)
}

#[cfg(not(unix))]
fn open_new(path: &Path, _mode: Mode) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}
