//! `wallets.members_version`: moved by every change to a team pool's member limits or
//! membership, in the same transaction that also moves the pool wallet's `version`. A seat
//! hands out limits with the version it read them at; the pool's wallet actor decides no
//! spend on older ones, and the moved `version` fences out any commit built before the
//! change, on every node.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Wallets {
    Table,
    MembersVersion,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Wallets::Table)
                    .add_column(
                        ColumnDef::new(Wallets::MembersVersion)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Wallets::Table)
                    .drop_column(Wallets::MembersVersion)
                    .to_owned(),
            )
            .await
    }
}
