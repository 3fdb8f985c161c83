//! `wallet_creations.request`: the canonical createWallet input a key was recorded with,
//! so that the key reused with other input is a conflict (SPEC 4), not the first wallet.
//! Keys recorded before this column have none and replay as before.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WalletCreations {
    Table,
    Request,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WalletCreations::Table)
                    .add_column(ColumnDef::new(WalletCreations::Request).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WalletCreations::Table)
                    .drop_column(WalletCreations::Request)
                    .to_owned(),
            )
            .await
    }
}
