//! Compiles the PostgreSQL-only tests in when `DATABASE_URL` names a PostgreSQL server, so that
//! `cargo test --workspace` on SQLite lists them as ignored (with the reason) instead of passing
//! them without running their assertions. The server-restart test also needs
//! `ORKESTRA_PG_RESTART`, the shell command that restarts that server (CI sets it). With
//! `ORKESTRA_CITUS` too, the URL names a Citus coordinator: the tests of the cluster itself are
//! compiled in, and those that need a database of their own are listed as ignored.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(orkestra_pg)");
    println!("cargo::rustc-check-cfg=cfg(orkestra_pg_restart)");
    println!("cargo::rustc-check-cfg=cfg(orkestra_citus)");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    println!("cargo::rerun-if-env-changed=ORKESTRA_PG_RESTART");
    println!("cargo::rerun-if-env-changed=ORKESTRA_CITUS");
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        println!("cargo::rustc-cfg=orkestra_pg");
        let citus = std::env::var("ORKESTRA_CITUS")
            .is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"));
        if citus {
            println!("cargo::rustc-cfg=orkestra_citus");
        }
        if std::env::var("ORKESTRA_PG_RESTART").is_ok_and(|command| !command.trim().is_empty()) {
            println!("cargo::rustc-cfg=orkestra_pg_restart");
        }
    }
}
