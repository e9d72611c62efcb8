//! Compiles the PostgreSQL-only tests in when `DATABASE_URL` names a PostgreSQL server, so that
//! `cargo test --workspace` on SQLite lists them as ignored (with the reason) instead of passing
//! them without running their assertions.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(orkestra_pg)");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        println!("cargo::rustc-cfg=orkestra_pg");
    }
}
