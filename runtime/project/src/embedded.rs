//! The files gust carries to write projects and install toolchains: the agent world, each
//! language's SDK, and the pinned toolchain manifests. They are compiled into the binary so
//! that `gust new` and `gust build` work wherever the binary is, without a checkout.

/// A file to write: its path inside the project, and its text.
pub(crate) type File = (&'static str, &'static str);

// `WIT`, `RUST_SDK`, `PYTHON_SDK`, `JS_SDK`: listed by `build.rs` from the repository's
// folders.
include!(concat!(env!("OUT_DIR"), "/embedded_files.rs"));

/// componentize-py, pinned with the hashes PyPI publishes (`pip install --require-hashes`).
pub(crate) const PYTHON_TOOLCHAIN_REQUIREMENTS: &str =
    include_str!("../../../sdk/python/toolchain-requirements.txt");

/// componentize-js and everything it pulls in, pinned by the lockfile (`npm ci`).
pub(crate) const JS_TOOLCHAIN_PACKAGE: &str = include_str!("../../../sdk/js/package.json");
pub(crate) const JS_TOOLCHAIN_LOCK: &str = include_str!("../../../sdk/js/package-lock.json");
