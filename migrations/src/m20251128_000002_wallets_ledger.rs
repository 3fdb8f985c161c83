//! Wallets (fenced snapshot rows), the append-only ledger, and the relational projections
//! of it the queries need: usage events, grant lots, reservations; plus createWallet keys.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Wallets {
    Table,
    Id,
    OwnerId,
    TeamId,
    Timezone,
    PlanId,
    CreatedUs,
    Version,
    Seq,
    Snapshot,
    NextDueUs,
}

#[derive(DeriveIden)]
enum Ledger {
    Table,
    WalletId,
    Seq,
    AtUs,
    Cause,
    IdempotencyKey,
    Entry,
    Balance,
}

#[derive(DeriveIden)]
enum UsageEvents {
    Table,
    Id,
    WalletId,
    Seq,
    AtUs,
    IdempotencyKey,
    ThreadId,
    Model,
    MemberId,
    InputTokens,
    CachedTokens,
    OutputTokens,
    CostUcr,
    UncollectedUcr,
    Tier,
    PricedBy,
    Charged,
    ReservationId,
}

#[derive(DeriveIden)]
enum Grants {
    Table,
    Id,
    WalletId,
    Seq,
    Kind,
    Reason,
    AmountUcr,
    SpentUcr,
    HeldUcr,
    ExpiredUcr,
    ExpiresUs,
    PaymentReference,
    BundleId,
    ReviewId,
    GrantedUs,
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    Id,
    WalletId,
    Seq,
    Status,
    AmountUcr,
    MemberId,
    IdempotencyKey,
    CreatedUs,
    ExpiresUs,
    SettleInput,
    SettleResult,
    ResolvedSeq,
}

#[derive(DeriveIden)]
enum WalletCreations {
    Table,
    OwnerId,
    IdempotencyKey,
    WalletId,
}

fn index(name: &str, table: impl IntoIden) -> IndexCreateStatement {
    Index::create().name(name).table(table).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Wallets::Table)
                    .col(
                        ColumnDef::new(Wallets::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Wallets::OwnerId).string().not_null())
                    .col(ColumnDef::new(Wallets::TeamId).string().null())
                    .col(ColumnDef::new(Wallets::Timezone).string().not_null())
                    .col(ColumnDef::new(Wallets::PlanId).string().not_null())
                    .col(ColumnDef::new(Wallets::CreatedUs).big_integer().not_null())
                    // The fence: every commit moves it by one, conditioned on the old value.
                    .col(ColumnDef::new(Wallets::Version).big_integer().not_null())
                    // Last ledger seq applied to `snapshot`.
                    .col(ColumnDef::new(Wallets::Seq).big_integer().not_null())
                    .col(ColumnDef::new(Wallets::Snapshot).text().not_null())
                    .col(ColumnDef::new(Wallets::NextDueUs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        for stmt in [
            index("wallets_owner", Wallets::Table)
                .col(Wallets::OwnerId)
                .col(Wallets::CreatedUs)
                .to_owned(),
            index("wallets_team", Wallets::Table)
                .col(Wallets::TeamId)
                .to_owned(),
            index("wallets_next_due", Wallets::Table)
                .col(Wallets::NextDueUs)
                .to_owned(),
        ] {
            manager.create_index(stmt).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Ledger::Table)
                    .col(ColumnDef::new(Ledger::WalletId).string().not_null())
                    .col(ColumnDef::new(Ledger::Seq).big_integer().not_null())
                    .col(ColumnDef::new(Ledger::AtUs).big_integer().not_null())
                    .col(ColumnDef::new(Ledger::Cause).string().not_null())
                    .col(ColumnDef::new(Ledger::IdempotencyKey).string().null())
                    .col(ColumnDef::new(Ledger::Entry).text().not_null())
                    // Balance after this record, so any node can re-publish the event.
                    .col(ColumnDef::new(Ledger::Balance).text().not_null())
                    .primary_key(Index::create().col(Ledger::WalletId).col(Ledger::Seq))
                    .to_owned(),
            )
            .await?;
        // NULLs are distinct in a unique index on both databases, so records without a
        // key never collide.
        manager
            .create_index(
                index("ledger_idempotency", Ledger::Table)
                    .col(Ledger::WalletId)
                    .col(Ledger::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UsageEvents::Table)
                    .col(
                        ColumnDef::new(UsageEvents::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(UsageEvents::WalletId).string().not_null())
                    .col(ColumnDef::new(UsageEvents::Seq).big_integer().not_null())
                    .col(ColumnDef::new(UsageEvents::AtUs).big_integer().not_null())
                    .col(ColumnDef::new(UsageEvents::IdempotencyKey).string().null())
                    .col(ColumnDef::new(UsageEvents::ThreadId).string().not_null())
                    .col(ColumnDef::new(UsageEvents::Model).string().not_null())
                    .col(ColumnDef::new(UsageEvents::MemberId).string().null())
                    .col(
                        ColumnDef::new(UsageEvents::InputTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageEvents::CachedTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageEvents::OutputTokens)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageEvents::CostUcr)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageEvents::UncollectedUcr)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageEvents::Tier).string().not_null())
                    .col(ColumnDef::new(UsageEvents::PricedBy).string().not_null())
                    // JSON list of (bucket, grant id, amount) in burn-down order.
                    .col(ColumnDef::new(UsageEvents::Charged).text().not_null())
                    .col(ColumnDef::new(UsageEvents::ReservationId).string().null())
                    .to_owned(),
            )
            .await?;
        for stmt in [
            index("usage_wallet_seq", UsageEvents::Table)
                .col(UsageEvents::WalletId)
                .col(UsageEvents::Seq)
                .unique()
                .to_owned(),
            index("usage_idempotency", UsageEvents::Table)
                .col(UsageEvents::WalletId)
                .col(UsageEvents::IdempotencyKey)
                .unique()
                .to_owned(),
            // History pages: newest first by (at, seq), optionally filtered.
            index("usage_wallet_at", UsageEvents::Table)
                .col(UsageEvents::WalletId)
                .col(UsageEvents::AtUs)
                .col(UsageEvents::Seq)
                .to_owned(),
            index("usage_wallet_thread", UsageEvents::Table)
                .col(UsageEvents::WalletId)
                .col(UsageEvents::ThreadId)
                .col(UsageEvents::AtUs)
                .col(UsageEvents::Seq)
                .to_owned(),
            index("usage_wallet_model", UsageEvents::Table)
                .col(UsageEvents::WalletId)
                .col(UsageEvents::Model)
                .col(UsageEvents::AtUs)
                .col(UsageEvents::Seq)
                .to_owned(),
            index("usage_wallet_member", UsageEvents::Table)
                .col(UsageEvents::WalletId)
                .col(UsageEvents::MemberId)
                .col(UsageEvents::AtUs)
                .col(UsageEvents::Seq)
                .to_owned(),
            // Platform-wide thread totals per model over a window (review percentiles).
            index("usage_model_at", UsageEvents::Table)
                .col(UsageEvents::Model)
                .col(UsageEvents::AtUs)
                .to_owned(),
        ] {
            manager.create_index(stmt).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Grants::Table)
                    .col(ColumnDef::new(Grants::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Grants::WalletId).string().not_null())
                    // Ledger seq of the grant record: the lot's place in spend order.
                    .col(ColumnDef::new(Grants::Seq).big_integer().not_null())
                    .col(ColumnDef::new(Grants::Kind).string().not_null())
                    .col(ColumnDef::new(Grants::Reason).text().null())
                    .col(ColumnDef::new(Grants::AmountUcr).big_integer().not_null())
                    .col(ColumnDef::new(Grants::SpentUcr).big_integer().not_null())
                    .col(ColumnDef::new(Grants::HeldUcr).big_integer().not_null())
                    .col(ColumnDef::new(Grants::ExpiredUcr).big_integer().not_null())
                    .col(ColumnDef::new(Grants::ExpiresUs).big_integer().null())
                    .col(ColumnDef::new(Grants::PaymentReference).string().null())
                    .col(ColumnDef::new(Grants::BundleId).string().null())
                    .col(ColumnDef::new(Grants::ReviewId).string().null())
                    .col(ColumnDef::new(Grants::GrantedUs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        for stmt in [
            index("grants_wallet_seq", Grants::Table)
                .col(Grants::WalletId)
                .col(Grants::Seq)
                .to_owned(),
            // SPEC 5: a payment reference is unique across all wallets.
            index("grants_payment_reference", Grants::Table)
                .col(Grants::PaymentReference)
                .unique()
                .to_owned(),
        ] {
            manager.create_index(stmt).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Reservations::Table)
                    .col(
                        ColumnDef::new(Reservations::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Reservations::WalletId).string().not_null())
                    .col(ColumnDef::new(Reservations::Seq).big_integer().not_null())
                    .col(ColumnDef::new(Reservations::Status).string().not_null())
                    .col(
                        ColumnDef::new(Reservations::AmountUcr)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Reservations::MemberId).string().null())
                    .col(ColumnDef::new(Reservations::IdempotencyKey).string().null())
                    .col(
                        ColumnDef::new(Reservations::CreatedUs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Reservations::ExpiresUs)
                            .big_integer()
                            .not_null(),
                    )
                    // Canonical settle input and its receipt, for idempotent replay.
                    .col(ColumnDef::new(Reservations::SettleInput).text().null())
                    .col(ColumnDef::new(Reservations::SettleResult).text().null())
                    .col(
                        ColumnDef::new(Reservations::ResolvedSeq)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        for stmt in [
            index("reservations_due", Reservations::Table)
                .col(Reservations::Status)
                .col(Reservations::ExpiresUs)
                .to_owned(),
            index("reservations_wallet", Reservations::Table)
                .col(Reservations::WalletId)
                .col(Reservations::Status)
                .col(Reservations::ExpiresUs)
                .to_owned(),
        ] {
            manager.create_index(stmt).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(WalletCreations::Table)
                    .col(ColumnDef::new(WalletCreations::OwnerId).string().not_null())
                    .col(
                        ColumnDef::new(WalletCreations::IdempotencyKey)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WalletCreations::WalletId)
                            .string()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(WalletCreations::OwnerId)
                            .col(WalletCreations::IdempotencyKey),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WalletCreations::Table.into_iden(),
            Reservations::Table.into_iden(),
            Grants::Table.into_iden(),
            UsageEvents::Table.into_iden(),
            Ledger::Table.into_iden(),
            Wallets::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
