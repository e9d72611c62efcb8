//! `orkestra-migration`: the migration command line (`up`, `down`, `status`, `fresh`, `refresh`,
//! `reset`), against `DATABASE_URL` or `-u <url>`. `sea-orm-cli migrate ...` runs this binary.

#[tokio::main]
async fn main() {
    sea_orm_migration::cli::run_cli(orkestra_migration::Migrator).await;
}
