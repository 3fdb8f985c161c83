//! Replaces `wallets_next_due` (next_due_us) with `wallets_next_due_id` (next_due_us, id):
//! the sweep of due wallets pages by that pair, and every wallet of one zone falls due at
//! the same local midnight, so with the instant alone each page read and sorted every
//! wallet of the zone still due, a quadratic midnight on many wallets.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Wallets {
    Table,
    NextDueUs,
    Id,
}

fn by_instant() -> IndexCreateStatement {
    Index::create()
        .name("wallets_next_due")
        .table(Wallets::Table)
        .col(Wallets::NextDueUs)
        .to_owned()
}

fn by_instant_and_id() -> IndexCreateStatement {
    Index::create()
        .name("wallets_next_due_id")
        .table(Wallets::Table)
        .col(Wallets::NextDueUs)
        .col(Wallets::Id)
        .to_owned()
}

fn drop(name: &str) -> IndexDropStatement {
    Index::drop().name(name).table(Wallets::Table).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_index(by_instant_and_id()).await?;
        manager.drop_index(drop("wallets_next_due")).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_index(by_instant()).await?;
        manager.drop_index(drop("wallets_next_due_id")).await
    }
}
