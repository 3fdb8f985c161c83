//! Teams and their members (with spend limits), high-usage reviews, API tokens.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Teams {
    Table,
    Id,
    Name,
    WalletId,
    CreatedUs,
}

#[derive(DeriveIden)]
enum TeamMembers {
    Table,
    TeamId,
    UserId,
    Role,
    DailyLimitUcr,
    PeriodLimitUcr,
    AddedUs,
}

#[derive(DeriveIden)]
enum Reviews {
    Table,
    Id,
    WalletId,
    ThreadId,
    ReporterId,
    TaskDescription,
    Model,
    PreviewStatus,
    ThreadLength,
    ContextSize,
    Status,
    Findings,
    SuggestedRefundUcr,
    CreditedUcr,
    Note,
    GrantId,
    CreatedUs,
    ResolvedUs,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Hash,
    Role,
    OwnerId,
    Label,
    CreatedUs,
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
                    .table(Teams::Table)
                    .col(ColumnDef::new(Teams::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Teams::Name).text().not_null())
                    .col(ColumnDef::new(Teams::WalletId).string().not_null())
                    .col(ColumnDef::new(Teams::CreatedUs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index("teams_wallet", Teams::Table)
                    .col(Teams::WalletId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TeamMembers::Table)
                    .col(ColumnDef::new(TeamMembers::TeamId).string().not_null())
                    .col(ColumnDef::new(TeamMembers::UserId).string().not_null())
                    .col(ColumnDef::new(TeamMembers::Role).string().not_null())
                    // NULL = no limit; 0 forbids spending.
                    .col(
                        ColumnDef::new(TeamMembers::DailyLimitUcr)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(TeamMembers::PeriodLimitUcr)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(TeamMembers::AddedUs)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(TeamMembers::TeamId)
                            .col(TeamMembers::UserId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index("team_members_user", TeamMembers::Table)
                    .col(TeamMembers::UserId)
                    .col(TeamMembers::AddedUs)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Reviews::Table)
                    .col(
                        ColumnDef::new(Reviews::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Reviews::WalletId).string().not_null())
                    .col(ColumnDef::new(Reviews::ThreadId).string().not_null())
                    .col(ColumnDef::new(Reviews::ReporterId).string().not_null())
                    .col(ColumnDef::new(Reviews::TaskDescription).text().not_null())
                    .col(ColumnDef::new(Reviews::Model).string().null())
                    .col(ColumnDef::new(Reviews::PreviewStatus).string().not_null())
                    .col(ColumnDef::new(Reviews::ThreadLength).big_integer().null())
                    .col(ColumnDef::new(Reviews::ContextSize).big_integer().null())
                    .col(ColumnDef::new(Reviews::Status).string().not_null())
                    // JSON: totals, retry loops, context growth, percentile, tips, the
                    // usage event ids the suggested refund covers.
                    .col(ColumnDef::new(Reviews::Findings).text().not_null())
                    .col(
                        ColumnDef::new(Reviews::SuggestedRefundUcr)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Reviews::CreditedUcr).big_integer().null())
                    .col(ColumnDef::new(Reviews::Note).text().null())
                    .col(ColumnDef::new(Reviews::GrantId).string().null())
                    .col(ColumnDef::new(Reviews::CreatedUs).big_integer().not_null())
                    .col(ColumnDef::new(Reviews::ResolvedUs).big_integer().null())
                    .to_owned(),
            )
            .await?;
        for stmt in [
            index("reviews_status", Reviews::Table)
                .col(Reviews::Status)
                .col(Reviews::CreatedUs)
                .to_owned(),
            index("reviews_wallet_thread", Reviews::Table)
                .col(Reviews::WalletId)
                .col(Reviews::ThreadId)
                .to_owned(),
            index("reviews_reporter", Reviews::Table)
                .col(Reviews::ReporterId)
                .col(Reviews::CreatedUs)
                .to_owned(),
            // SPEC 7: at most one SUBMITTED review per (wallet, thread).
            index("reviews_one_open", Reviews::Table)
                .col(Reviews::WalletId)
                .col(Reviews::ThreadId)
                .unique()
                .and_where(Expr::col(Reviews::Status).eq("SUBMITTED"))
                .to_owned(),
        ] {
            manager.create_index(stmt).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(ApiTokens::Table)
                    // Hex SHA-256 of the secret; the secret itself is never stored.
                    .col(
                        ColumnDef::new(ApiTokens::Hash)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ApiTokens::Role).string().not_null())
                    .col(ColumnDef::new(ApiTokens::OwnerId).string().null())
                    .col(ColumnDef::new(ApiTokens::Label).text().null())
                    .col(
                        ColumnDef::new(ApiTokens::CreatedUs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index("api_tokens_owner", ApiTokens::Table)
                    .col(ApiTokens::OwnerId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ApiTokens::Table.into_iden(),
            Reviews::Table.into_iden(),
            TeamMembers::Table.into_iden(),
            Teams::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
