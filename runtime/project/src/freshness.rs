//! Whether a project's component is older than its sources, so `gust deploy` builds only
//! when something changed.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;

/// Folders that hold build products, dependencies or tool caches, not sources.
const NOT_SOURCES: &[&str] = &["build", "target", "node_modules", "__pycache__"];

/// The component `gust build` writes for the project in `project`.
pub fn component_path(project: &Path, name: &str) -> std::path::PathBuf {
    project.join("build").join(format!("{name}.wasm"))
}

/// True when `component` is missing or anything under `project` (everything but hidden
/// files and the folders in `NOT_SOURCES`) changed after it: a file written, or a folder
/// whose entries changed (a source renamed or deleted). Symbolic links are not followed.
pub fn needs_build(project: &Path, component: &Path) -> anyhow::Result<bool> {
    let built = match std::fs::metadata(component) {
        Ok(meta) => meta.modified().context("reading the component's time")?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e).with_context(|| format!("reading {}", component.display())),
    };
    newer_than(project, built)
}

fn newer_than(dir: &Path, built: SystemTime) -> anyhow::Result<bool> {
    if std::fs::symlink_metadata(dir)?.modified()? > built {
        return Ok(true);
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || NOT_SOURCES.contains(&name.as_ref()) {
            continue;
        }
        // The link itself, not what it points to: a link to `..` must not loop.
        let meta = entry.path().symlink_metadata()?;
        if meta.is_dir() {
            if newer_than(&entry.path(), built)? {
                return Ok(true);
            }
        } else if meta.modified()? > built {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_touched_after_the_build_needs_a_build() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path();
        std::fs::create_dir_all(project.join("src")).unwrap();
        std::fs::create_dir_all(project.join("build")).unwrap();
        std::fs::write(project.join("src/lib.rs"), "// v1").unwrap();
        let component = component_path(project, "hello");
        assert!(needs_build(project, &component).unwrap(), "never built");

        std::fs::write(&component, b"\0asm").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&component)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(
            !needs_build(project, &component).unwrap(),
            "built after the sources"
        );

        // Build products and hidden folders do not count; a source does.
        std::fs::create_dir_all(project.join("target")).unwrap();
        let touch = |path: &Path| {
            std::fs::write(path, "x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(later + std::time::Duration::from_secs(5))
                .unwrap();
        };
        touch(&project.join("target/out.o"));
        std::fs::create_dir_all(project.join(".git")).unwrap();
        touch(&project.join(".git/index"));
        assert!(!needs_build(project, &component).unwrap());
        touch(&project.join("src/lib.rs"));
        assert!(needs_build(project, &component).unwrap());
    }

    #[test]
    fn a_removed_source_needs_a_build_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path();
        std::fs::create_dir_all(project.join("src")).unwrap();
        std::fs::write(project.join("src/lib.rs"), "// v1").unwrap();
        std::fs::write(project.join("src/old.rs"), "// v1").unwrap();
        std::os::unix::fs::symlink("..", project.join("src/up")).unwrap();
        let component = component_path(project, "hello");
        std::fs::create_dir_all(project.join("build")).unwrap();
        std::fs::write(&component, b"\0asm").unwrap();
        let built = SystemTime::now() + std::time::Duration::from_secs(5);
        let set = |path: &Path, at: SystemTime| {
            std::fs::File::open(path).unwrap().set_modified(at).unwrap();
        };
        set(&component, built);
        for path in [
            project.to_path_buf(),
            project.join("src"),
            project.join("src/lib.rs"),
            project.join("src/old.rs"),
        ] {
            set(&path, built - std::time::Duration::from_secs(10));
        }
        assert!(
            !needs_build(project, &component).unwrap(),
            "nothing changed"
        );
        std::fs::remove_file(project.join("src/old.rs")).unwrap();
        set(
            &project.join("src"),
            built + std::time::Duration::from_secs(5),
        );
        assert!(
            needs_build(project, &component).unwrap(),
            "a source was removed"
        );
    }
}
