//! The files gust carries to write projects and install toolchains: the agent world, each
//! language's SDK, and the pinned toolchain manifests. They are compiled into the binary so
//! that `gust new` and `gust build` work wherever the binary is, without a checkout.

/// A file to write: its path inside the project, and its text.
pub(crate) type File = (&'static str, &'static str);

/// The agent world and the WASI packages it uses, as `wit/` in every project.
pub(crate) const WIT: &[File] = &[
    ("wit/agent.wit", include_str!("../../../wit/agent.wit")),
    (
        "wit/deps/README.md",
        include_str!("../../../wit/deps/README.md"),
    ),
    (
        "wit/deps/cli.wit",
        include_str!("../../../wit/deps/cli.wit"),
    ),
    (
        "wit/deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    (
        "wit/deps/http.wit",
        include_str!("../../../wit/deps/http.wit"),
    ),
    ("wit/deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "wit/deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
];

/// The Rust SDK as a standalone crate in `sdk/` (the repository's manifests inherit from its
/// workspace, so projects get their own).
pub(crate) const RUST_SDK: &[File] = &[
    (
        "sdk/Cargo.toml",
        include_str!("../../templates/rust/sdk.Cargo.toml"),
    ),
    ("sdk/src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    (
        "sdk/src/bindings.rs",
        include_str!("../../../sdk/src/bindings.rs"),
    ),
    (
        "sdk/src/context.rs",
        include_str!("../../../sdk/src/context.rs"),
    ),
    (
        "sdk/src/error.rs",
        include_str!("../../../sdk/src/error.rs"),
    ),
    ("sdk/src/glue.rs", include_str!("../../../sdk/src/glue.rs")),
    ("sdk/src/http.rs", include_str!("../../../sdk/src/http.rs")),
    (
        "sdk/macros/Cargo.toml",
        include_str!("../../templates/rust/sdk-macros.Cargo.toml"),
    ),
    (
        "sdk/macros/src/lib.rs",
        include_str!("../../../sdk/macros/src/lib.rs"),
    ),
];

/// The Python SDK package, in `sdk/gust/`.
pub(crate) const PYTHON_SDK: &[File] = &[
    (
        "sdk/gust/__init__.py",
        include_str!("../../../sdk/python/gust/__init__.py"),
    ),
    (
        "sdk/gust/http.py",
        include_str!("../../../sdk/python/gust/http.py"),
    ),
];

/// The JavaScript SDK module, as `sdk/gust.js`.
pub(crate) const JS_SDK: &[File] = &[("sdk/gust.js", include_str!("../../../sdk/js/gust.js"))];

/// componentize-py, pinned with the hashes PyPI publishes (`pip install --require-hashes`).
pub(crate) const PYTHON_TOOLCHAIN_REQUIREMENTS: &str =
    include_str!("../../../sdk/python/toolchain-requirements.txt");

/// componentize-js and everything it pulls in, pinned by the lockfile (`npm ci`).
pub(crate) const JS_TOOLCHAIN_PACKAGE: &str = include_str!("../../../sdk/js/package.json");
pub(crate) const JS_TOOLCHAIN_LOCK: &str = include_str!("../../../sdk/js/package-lock.json");
