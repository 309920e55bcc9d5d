//! The real `semikv-server` and `semikv-lb` binaries, built once per test
//! process.
//!
//! They are built with the profile, target triple and target dir of the
//! running test executable (read from its own path), so under `cargo test`
//! the build is a no-op or an incremental step in the same tree: no second
//! target dir, no manual `cargo build` first.
//!
//! `SEMIKV_SERVER_BIN` / `SEMIKV_LB_BIN` override the path (to test another
//! build, e.g. a release binary) and skip the build; so does [`use_server`],
//! for a tool that takes the replica binary on its command line.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::anyhow;

/// Package and binary name of the replica.
pub const SERVER: &str = "semikv-server";
/// Package name of the balancer.
pub const BALANCER_PACKAGE: &str = "semikv-lb";
/// Binary name of the balancer.
pub const BALANCER: &str = "semikv-lb";

/// Environment variable naming a prebuilt `semikv-server` to use instead.
pub const SERVER_ENV: &str = "SEMIKV_SERVER_BIN";
/// Environment variable naming a prebuilt `semikv-lb` to use instead.
pub const BALANCER_ENV: &str = "SEMIKV_LB_BIN";

/// Path of the `semikv-server` binary, building it on first use.
///
/// # Errors
/// The build failed (the error carries cargo's message). The failure is
/// cached: later calls fail the same way without rebuilding.
pub fn server() -> anyhow::Result<PathBuf> {
    cached(&SERVER_PATH, SERVER_ENV, SERVER, SERVER)
}

/// Makes [`server`] return `path` instead of building (or reading
/// [`SERVER_ENV`]).
///
/// # Errors
/// [`server`] was already called: the binary is chosen once per process.
pub fn use_server(path: PathBuf) -> anyhow::Result<()> {
    SERVER_PATH
        .set(Ok(path))
        .map_err(|_| anyhow!("the {SERVER} binary was already chosen"))
}

/// The `semikv-server` binary once chosen (or the build's error).
static SERVER_PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of the `semikv-lb` binary, building it on first use.
///
/// # Errors
/// As [`server`].
pub fn balancer() -> anyhow::Result<PathBuf> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached(&PATH, BALANCER_ENV, BALANCER_PACKAGE, BALANCER)
}

/// Package of the tools (`semikv`, `semikv-bench`).
pub const TOOLS_PACKAGE: &str = "semikv-cli";
/// Binary name of the load generator.
pub const BENCH: &str = "semikv-bench";

/// Path of the `semikv-bench` binary, building it on first use.
///
/// # Errors
/// As [`server`].
pub fn bench() -> anyhow::Result<PathBuf> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    cached(&PATH, "SEMIKV_BENCH_BIN", TOOLS_PACKAGE, BENCH)
}

fn cached(
    cell: &OnceLock<Result<PathBuf, String>>,
    env: &str,
    package: &str,
    bin: &str,
) -> anyhow::Result<PathBuf> {
    cell.get_or_init(|| match std::env::var_os(env) {
        Some(path) => Ok(PathBuf::from(path)),
        None => build(package, bin),
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Where and how the running test executable was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The `--target-dir`.
    pub target_dir: PathBuf,
    /// The profile directory name (`debug`, `release` or a custom profile).
    pub profile_dir: String,
    /// `Some(triple)` when the tests were built with `--target triple`.
    pub triple: Option<String>,
}

/// Reads the build layout from a test executable's path:
/// `TARGET_DIR[/TRIPLE]/PROFILE/deps/NAME-HASH`.
pub fn layout_of(exe: &Path) -> Option<Layout> {
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    let profile = deps.parent()?;
    let profile_dir = profile.file_name()?.to_str()?.to_string();
    let base = profile.parent()?;
    if base.file_name().and_then(|n| n.to_str()) == Some(escargot::CURRENT_TARGET) {
        Some(Layout {
            target_dir: base.parent()?.to_path_buf(),
            profile_dir,
            triple: Some(escargot::CURRENT_TARGET.to_string()),
        })
    } else {
        Some(Layout {
            target_dir: base.to_path_buf(),
            profile_dir,
            triple: None,
        })
    }
}

fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("Cargo.toml")
}

fn build(package: &str, bin: &str) -> Result<PathBuf, String> {
    let mut build = escargot::CargoBuild::new()
        .manifest_path(workspace_manifest())
        .package(package)
        .bin(bin);
    let exe = std::env::current_exe().map_err(|e| format!("locating the test executable: {e}"))?;
    match layout_of(&exe) {
        Some(layout) => {
            build = build.target_dir(&layout.target_dir);
            if let Some(triple) = &layout.triple {
                build = build.target(triple);
            }
            build = match layout.profile_dir.as_str() {
                "debug" => build,
                "release" => build.release(),
                other => build.profile(other),
            };
        }
        // Not run from a cargo target dir (e.g. copied elsewhere): let cargo
        // pick the target dir from its own config and environment.
        None => build = build.current_release(),
    }
    let run = build
        .run()
        .map_err(|e| format!("building {bin} (package {package}): {e}"))?;
    Ok(run.path().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_plain_and_cross_builds() {
        let plain = layout_of(Path::new("/t/debug/deps/it-abc")).unwrap();
        assert_eq!(plain.target_dir, Path::new("/t"));
        assert_eq!(plain.profile_dir, "debug");
        assert_eq!(plain.triple, None);

        let cross = format!("/t/{}/release/deps/it-abc", escargot::CURRENT_TARGET);
        let cross = layout_of(Path::new(&cross)).unwrap();
        assert_eq!(cross.target_dir, Path::new("/t"));
        assert_eq!(cross.profile_dir, "release");
        assert_eq!(cross.triple.as_deref(), Some(escargot::CURRENT_TARGET));

        assert_eq!(layout_of(Path::new("/somewhere/it")), None);
    }
}
