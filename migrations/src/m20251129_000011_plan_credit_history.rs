//! `plan_credit_history`: a plan's credits before each edit of them, so that a reset or a
//! renewal due before an edit, applied late (an idle wallet catching up, a node that has not
//! heard of the edit yet), takes the credits of its own instant (SPEC 5), and a commit can
//! be checked against them. Plans edited before this table have no history: their current
//! credits stand for every instant, as before.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PlanCreditHistory {
    Table,
    PlanId,
    UntilUs,
    DailyUcr,
    SubscriptionUcr,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PlanCreditHistory::Table)
                    .col(
                        ColumnDef::new(PlanCreditHistory::PlanId)
                            .string()
                            .not_null(),
                    )
                    // The edit's instant: these credits applied before it.
                    .col(
                        ColumnDef::new(PlanCreditHistory::UntilUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PlanCreditHistory::DailyUcr)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PlanCreditHistory::SubscriptionUcr)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(PlanCreditHistory::PlanId)
                            .col(PlanCreditHistory::UntilUs),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PlanCreditHistory::Table).to_owned())
            .await
    }
}
