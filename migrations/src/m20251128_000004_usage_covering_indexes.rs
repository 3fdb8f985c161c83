//! Covering indexes for usage summaries and the review percentile (measured in
//! `crates/credits-store/benches/usage.rs`, figures in `docs/BENCHMARKS.md`).
//!
//! - `usage_wallet_at` (wallet, at, seq) becomes `usage_wallet_at_cover` (wallet, at, seq,
//!   model, thread, member, cost): history pages keep their order, and a summary over a
//!   time range reads one index range without visiting the table.
//! - `usage_model_at` (model, at) becomes `usage_model_at_cover` (model, at, wallet,
//!   thread, cost): the platform-wide thread totals of one model over 30 days read one
//!   index range only.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageEvents {
    Table,
    WalletId,
    Seq,
    AtUs,
    ThreadId,
    Model,
    MemberId,
    CostUcr,
}

fn wallet_at() -> IndexCreateStatement {
    Index::create()
        .name("usage_wallet_at")
        .table(UsageEvents::Table)
        .col(UsageEvents::WalletId)
        .col(UsageEvents::AtUs)
        .col(UsageEvents::Seq)
        .to_owned()
}

fn wallet_at_cover() -> IndexCreateStatement {
    Index::create()
        .name("usage_wallet_at_cover")
        .table(UsageEvents::Table)
        .col(UsageEvents::WalletId)
        .col(UsageEvents::AtUs)
        .col(UsageEvents::Seq)
        .col(UsageEvents::Model)
        .col(UsageEvents::ThreadId)
        .col(UsageEvents::MemberId)
        .col(UsageEvents::CostUcr)
        .to_owned()
}

fn model_at() -> IndexCreateStatement {
    Index::create()
        .name("usage_model_at")
        .table(UsageEvents::Table)
        .col(UsageEvents::Model)
        .col(UsageEvents::AtUs)
        .to_owned()
}

fn model_at_cover() -> IndexCreateStatement {
    Index::create()
        .name("usage_model_at_cover")
        .table(UsageEvents::Table)
        .col(UsageEvents::Model)
        .col(UsageEvents::AtUs)
        .col(UsageEvents::WalletId)
        .col(UsageEvents::ThreadId)
        .col(UsageEvents::CostUcr)
        .to_owned()
}

fn drop(name: &str) -> IndexDropStatement {
    Index::drop()
        .name(name)
        .table(UsageEvents::Table)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The new index first, so no moment is left without one.
        manager.create_index(wallet_at_cover()).await?;
        manager.drop_index(drop("usage_wallet_at")).await?;
        manager.create_index(model_at_cover()).await?;
        manager.drop_index(drop("usage_model_at")).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_index(model_at()).await?;
        manager.drop_index(drop("usage_model_at_cover")).await?;
        manager.create_index(wallet_at()).await?;
        manager.drop_index(drop("usage_wallet_at_cover")).await
    }
}
