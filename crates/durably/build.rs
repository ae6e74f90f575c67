//! Enables the PostgreSQL behaviour suite (`cfg(durably_postgres_tests)`) when the test database
//! is configured; without it those tests are compiled but reported as ignored, with the reason.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(durably_postgres_tests)");
    println!("cargo::rerun-if-env-changed=DURABLY_TEST_POSTGRES_URL");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("DURABLY_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=durably_postgres_tests");
    }
}
