//! Compiles the PostgreSQL-only tests in when `DATABASE_URL` names a PostgreSQL server, so that
//! `cargo test --workspace` on SQLite lists them as ignored (with the reason) instead of passing
//! them without running their assertions. The server-restart test also needs
//! `ORKESTRA_PG_RESTART`, the shell command that restarts that server (CI sets it).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(orkestra_pg)");
    println!("cargo::rustc-check-cfg=cfg(orkestra_pg_restart)");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    println!("cargo::rerun-if-env-changed=ORKESTRA_PG_RESTART");
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        println!("cargo::rustc-cfg=orkestra_pg");
        if std::env::var("ORKESTRA_PG_RESTART").is_ok_and(|command| !command.trim().is_empty()) {
            println!("cargo::rustc-cfg=orkestra_pg_restart");
        }
    }
}
