//! Drops `reservations_due` (status, expires_us): reservations expire inside their wallet's
//! actor (each wallet's next due instant is `wallets.next_due_us`), and no query reads
//! reservations across wallets by expiry any more, so the index only cost every
//! reservation write a B-tree update.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Reservations {
    Table,
    Status,
    ExpiresUs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("reservations_due")
                    .table(Reservations::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("reservations_due")
                    .table(Reservations::Table)
                    .col(Reservations::Status)
                    .col(Reservations::ExpiresUs)
                    .to_owned(),
            )
            .await
    }
}
