//! The README's quick start as a newcomer meets it: `cargo new` a project outside this
//! workspace, paste the README's `[dependencies]` block (its path pointed at this checkout) and
//! its example as `src/main.rs`, then `cargo run` it and read what it prints.
//!
//! The example is also a doctest (`lib.rs` includes the README), which proves it compiles
//! inside the workspace; this test proves the dependency block is enough on its own and that
//! the program runs to its promised output. It builds in its own target directory under this
//! workspace's (a build lock shared with the running `cargo test` would deadlock), with the
//! workspace's `Cargo.lock` so that the versions are the tested ones.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The body of the first fenced block of `README.md` whose info string is `info`, after the
/// heading `section`.
fn readme_block(readme: &str, section: &str, info: &str) -> String {
    let after_section = readme
        .split_once(&format!("\n{section}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading {section:?}"))
        .1;
    let after_fence = after_section
        .split_once(&format!("```{info}\n"))
        .unwrap_or_else(|| panic!("README.md has no ```{info} block after {section:?}"))
        .1;
    let (body, _) = after_fence
        .split_once("\n```")
        .unwrap_or_else(|| panic!("the ```{info} block after {section:?} is not closed"));
    format!("{body}\n")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/durably sits two levels below the workspace root")
        .to_path_buf()
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set, else `target/`).
fn workspace_target() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target"),
    }
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("could not start {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_readme_example_builds_and_runs_in_a_fresh_project() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md is readable");
    let dependencies = readme_block(&readme, "## Use it", "toml");
    let example = readme_block(&readme, "## Example", "rust,no_run");

    // The README points at a checkout beside the application; here the checkout is this one.
    let readme_path = "path = \"../durably/crates/durably\"";
    assert!(
        dependencies.contains(readme_path),
        "the README's [dependencies] block no longer says {readme_path}; update this test"
    );
    let crate_path = root.join("crates/durably");
    let dependencies = dependencies.replace(
        readme_path,
        &format!("path = {:?}", crate_path.display().to_string()),
    );

    let home = tempfile::tempdir().expect("temporary directory");
    let project = home.path().join("orders");
    run(
        Command::new(env!("CARGO"))
            .args(["new", "--vcs", "none", "--quiet", "orders"])
            .current_dir(home.path()),
        "cargo new",
    );
    let manifest_path = project.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path).expect("cargo new wrote Cargo.toml");
    // `cargo new` ends the manifest with an empty `[dependencies]` table: the README's block
    // replaces it.
    let manifest = manifest
        .trim_end()
        .strip_suffix("[dependencies]")
        .expect("cargo new's manifest ends with [dependencies]")
        .to_owned();
    std::fs::write(&manifest_path, format!("{manifest}{dependencies}")).expect("write Cargo.toml");
    std::fs::write(project.join("src/main.rs"), example).expect("write src/main.rs");
    std::fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock")).expect("copy Cargo.lock");

    let stdout = run(
        Command::new(env!("CARGO"))
            .args(["run", "--quiet"])
            .current_dir(&project)
            .env(
                "CARGO_TARGET_DIR",
                workspace_target().join("readme-quick-start"),
            ),
        "cargo run of the README's example",
    );
    assert_eq!(
        stdout, "Some(\"label-7\")\n",
        "the README promises that the example prints Some(\"label-7\")"
    );
    assert!(
        project.join("app.db").is_file(),
        "the example keeps its runs in app.db beside it"
    );
}
