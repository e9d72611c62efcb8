//! `scratch-db`: throwaway PostgreSQL databases for the justfile and CI.
//!
//! ```text
//! scratch-db create --pid <owner pid>   prints the URL of a new, empty database
//! scratch-db drop <url>                 drops it
//! scratch-db sweep                      drops what exited test runs left behind
//! ```
//! The server is the one `DATABASE_URL` names. A scratch database carries its owner's pid (the
//! calling shell's `$$`), so a sweep leaves it alone while that shell runs.

use anyhow::{Context as _, bail};
use orkestra_tests::pg;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL must name the PostgreSQL server to use")?;
    pg::require_postgres(&admin_url)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let admin = pg::admin(&admin_url).await?;
    match args.as_slice() {
        ["create", "--pid", pid] => {
            let pid: u32 = pid.parse().context("--pid takes a process id")?;
            let name = pg::database_name("scratch", pid);
            pg::create_database(&admin, &name, None).await?;
            println!("{}", pg::url_for(&admin_url, &name)?);
        }
        ["drop", url] => {
            let name = url::Url::parse(url)
                .context("not a URL")?
                .path()
                .trim_start_matches('/')
                .to_owned();
            if !name.starts_with("orkestra_scratch_") {
                bail!("refusing to drop {name:?}: not a scratch database");
            }
            pg::drop_database(&admin, &name).await?;
        }
        ["sweep"] => {
            for name in pg::sweep(&admin).await? {
                eprintln!("dropped leftover database {name}");
            }
        }
        _ => bail!("usage: scratch-db create --pid <pid> | drop <url> | sweep"),
    }
    admin.close().await?;
    Ok(())
}
