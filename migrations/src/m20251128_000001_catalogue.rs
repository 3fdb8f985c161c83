//! Plans (catalogue and custom) and bundles.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Plans {
    Table,
    Id,
    Name,
    DailyUcr,
    SubscriptionUcr,
    Interval,
    ModelTiers,
    Custom,
    Position,
    UpdatedUs,
}

#[derive(DeriveIden)]
enum Bundles {
    Table,
    Id,
    CreditsUcr,
    PriceCents,
    Currency,
    Position,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Plans::Table)
                    .col(ColumnDef::new(Plans::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Plans::Name).text().not_null())
                    .col(ColumnDef::new(Plans::DailyUcr).big_integer().not_null())
                    .col(
                        ColumnDef::new(Plans::SubscriptionUcr)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Plans::Interval).string().not_null())
                    // JSON array of tier names.
                    .col(ColumnDef::new(Plans::ModelTiers).text().not_null())
                    .col(ColumnDef::new(Plans::Custom).boolean().not_null())
                    // Catalogue file order; `plans` lists catalogue plans by it, then
                    // custom plans by id.
                    .col(ColumnDef::new(Plans::Position).big_integer().not_null())
                    .col(ColumnDef::new(Plans::UpdatedUs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("plans_listing")
                    .table(Plans::Table)
                    .col(Plans::Custom)
                    .col(Plans::Position)
                    .col(Plans::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Bundles::Table)
                    .col(
                        ColumnDef::new(Bundles::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Bundles::CreditsUcr).big_integer().not_null())
                    .col(ColumnDef::new(Bundles::PriceCents).big_integer().not_null())
                    .col(ColumnDef::new(Bundles::Currency).string().not_null())
                    .col(ColumnDef::new(Bundles::Position).big_integer().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Bundles::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Plans::Table).to_owned())
            .await
    }
}
