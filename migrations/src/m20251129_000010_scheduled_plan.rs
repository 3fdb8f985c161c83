//! `wallets.scheduled_plan_id`: the plan a wallet moves to at its next renewal (SPEC 5),
//! kept beside `plan_id` so that "a plan in use" (whose interval may not change) covers a
//! plan that is only scheduled. Filled from each wallet's snapshot.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Wallets {
    Table,
    ScheduledPlanId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Wallets::Table)
                    .add_column(ColumnDef::new(Wallets::ScheduledPlanId).string().null())
                    .to_owned(),
            )
            .await?;
        let fill = match manager.get_database_backend() {
            DbBackend::Postgres => {
                "UPDATE wallets SET scheduled_plan_id = (snapshot::json)->>'scheduled_plan_id'"
            }
            _ => {
                "UPDATE wallets SET scheduled_plan_id = json_extract(snapshot, '$.scheduled_plan_id')"
            }
        };
        manager.get_connection().execute_unprepared(fill).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Wallets::Table)
                    .drop_column(Wallets::ScheduledPlanId)
                    .to_owned(),
            )
            .await
    }
}
