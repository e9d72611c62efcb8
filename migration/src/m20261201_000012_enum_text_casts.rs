//! Immutable casts of the six enum types to text (PostgreSQL only; SQLite stores enums as text).
//!
//! SeaORM reads a native enum column as `CAST(status AS text)`, in `SELECT` lists and in the
//! `RETURNING` clause of every insert and update. Without a cast of its own, PostgreSQL converts an
//! enum to text through the type's output function, `enum_out`, which is `STABLE` (a label can be
//! renamed). Citus refuses any function that is not `IMMUTABLE` in a `RETURNING` clause
//! (`non-IMMUTABLE functions are not allowed in the RETURNING clause`), so every write whose
//! model comes back failed on a distributed table. An explicit cast through an `IMMUTABLE`
//! function is what `CAST(... AS text)` then calls, on plain PostgreSQL and on Citus alike, with
//! the same result.
//!
//! `AS ASSIGNMENT`, as PostgreSQL's own conversion of an enum to text is: writing an enum into a
//! text column (`INSERT ... SELECT status`) keeps working without a cast written out.
//!
//! Declaring it immutable is sound for this schema: the labels are fixed by the migrations, and
//! no index or stored value depends on the function. A migration that renames a label
//! (`ALTER TYPE ... RENAME VALUE`) must also end the sessions that may hold plans made before it.
//! The function's body calls `enum_out` and `textin` by name, not `::text`, which would be this
//! very cast again.

use sea_orm_migration::prelude::*;

use crate::common::{ENUMS, execute_on_postgres};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = ENUMS
            .iter()
            .flat_map(|db_enum| db_enum.text_cast())
            .collect();
        execute_on_postgres(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = ENUMS
            .iter()
            .rev()
            .flat_map(|db_enum| db_enum.drop_text_cast())
            .collect();
        execute_on_postgres(manager, statements).await
    }
}
