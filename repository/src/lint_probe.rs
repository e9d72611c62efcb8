//! Ways around tenant scoping that clippy must refuse in this crate. Compiled only by
//! `just lint-scoping` (`cargo clippy -p orkestra-repository -- --cfg orkestra_lint_probe`), which
//! fails unless clippy reports every one of them; never part of a build.

use orkestra_entity::tasks;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, ModelTrait,
    sea_query::{Expr, SelectStatement, UpdateStatement},
};

/// Reads every tenant's tasks.
pub async fn find_every_tenants_tasks(db: &DatabaseConnection) -> Result<usize, DbErr> {
    Ok(tasks::Entity::find().all(db).await?.len())
}

/// Saves a model whose tenant the caller chose.
pub async fn update_a_model(
    db: &DatabaseConnection,
    task: tasks::ActiveModel,
) -> Result<(), DbErr> {
    task.update(db).await.map(|_| ())
}

/// Deletes a model whose tenant the caller chose.
pub async fn delete_a_model(db: &DatabaseConnection, task: tasks::Model) -> Result<(), DbErr> {
    task.delete(db).await.map(|_| ())
}

/// Updates every tenant's tasks with a hand-built statement.
pub async fn update_by_hand(db: &DatabaseConnection) -> Result<(), DbErr> {
    let statement = UpdateStatement::new()
        .table(tasks::Entity)
        .value(tasks::Column::Title, Expr::value("x"))
        .to_owned();
    db.execute(&statement).await.map(|_| ())
}

/// Reads every tenant's tasks with a hand-built statement.
pub async fn select_by_hand(db: &DatabaseConnection) -> Result<usize, DbErr> {
    let statement = SelectStatement::new()
        .column(tasks::Column::Id)
        .from(tasks::Entity)
        .to_owned();
    Ok(db.query_all(&statement).await?.len())
}

/// Deletes every tenant's tasks in raw SQL.
pub async fn raw_sql(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("DELETE FROM tasks").await.map(|_| ())
}
