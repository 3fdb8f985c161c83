//! A unique index on `grants.review_id`: a review is compensated with one lot (SPEC 7),
//! held by the database as a payment's one lot is (`grants_payment_reference`), and the
//! lot of a review is found without reading the review first. Rows without a review hold
//! NULL, which a unique index never compares equal.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Grants {
    Table,
    ReviewId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("grants_review")
                    .table(Grants::Table)
                    .col(Grants::ReviewId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("grants_review")
                    .table(Grants::Table)
                    .to_owned(),
            )
            .await
    }
}
