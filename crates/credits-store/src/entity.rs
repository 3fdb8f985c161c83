//! sea-orm entities, one module per table, mirroring `migrations/` column for column. They
//! are storage shapes (instants as µs, amounts as µcr, payloads as JSON text) and never
//! leave this crate: the public API converts them to the row types in [`crate::rows`].

/// Models as active models for `insert_many`, which infers its active-model type from
/// the items.
pub(crate) fn active<M, A>(models: impl IntoIterator<Item = M>) -> impl Iterator<Item = A>
where
    M: sea_orm::IntoActiveModel<A>,
    A: sea_orm::ActiveModelTrait,
{
    models.into_iter().map(M::into_active_model)
}

macro_rules! no_relations {
    () => {
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    };
}

pub mod plans {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "plans")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(column_type = "Text")]
        pub name: String,
        pub daily_ucr: i64,
        pub subscription_ucr: i64,
        pub interval: String,
        #[sea_orm(column_type = "Text")]
        pub model_tiers: String,
        pub custom: bool,
        pub retired: bool,
        pub position: i64,
        pub updated_us: i64,
    }
    no_relations!();
}

pub mod plan_credit_history {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "plan_credit_history")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub plan_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub until_us: i64,
        pub daily_ucr: i64,
        pub subscription_ucr: i64,
    }
    no_relations!();
}

pub mod bundles {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bundles")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub credits_ucr: i64,
        pub price_cents: i64,
        pub currency: String,
        pub position: i64,
    }
    no_relations!();
}

pub mod wallets {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub owner_id: String,
        pub team_id: Option<String>,
        pub timezone: String,
        pub plan_id: String,
        pub created_us: i64,
        pub version: i64,
        pub seq: i64,
        #[sea_orm(column_type = "Text")]
        pub snapshot: String,
        pub next_due_us: Option<i64>,
        pub members_version: i64,
        pub scheduled_plan_id: Option<String>,
    }
    no_relations!();
}

pub mod ledger {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub wallet_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub at_us: i64,
        pub cause: String,
        pub idempotency_key: Option<String>,
        #[sea_orm(column_type = "Text")]
        pub entry: String,
        #[sea_orm(column_type = "Text")]
        pub balance: String,
    }
    no_relations!();
}

pub mod usage_events {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub wallet_id: String,
        pub seq: i64,
        pub at_us: i64,
        pub idempotency_key: Option<String>,
        pub thread_id: String,
        pub model: String,
        pub member_id: Option<String>,
        pub input_tokens: i64,
        pub cached_tokens: i64,
        pub output_tokens: i64,
        pub cost_ucr: i64,
        pub uncollected_ucr: i64,
        pub tier: String,
        pub priced_by: String,
        #[sea_orm(column_type = "Text")]
        pub charged: String,
        pub reservation_id: Option<String>,
    }
    no_relations!();
}

pub mod grants {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "grants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub wallet_id: String,
        pub seq: i64,
        pub kind: String,
        #[sea_orm(column_type = "Text", nullable)]
        pub reason: Option<String>,
        pub amount_ucr: i64,
        pub spent_ucr: i64,
        pub held_ucr: i64,
        pub expired_ucr: i64,
        pub expires_us: Option<i64>,
        pub payment_reference: Option<String>,
        pub bundle_id: Option<String>,
        pub review_id: Option<String>,
        pub granted_us: i64,
    }
    no_relations!();
}

pub mod reservations {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub wallet_id: String,
        pub seq: i64,
        pub status: String,
        pub amount_ucr: i64,
        pub member_id: Option<String>,
        pub idempotency_key: Option<String>,
        pub created_us: i64,
        pub expires_us: i64,
        #[sea_orm(column_type = "Text", nullable)]
        pub settle_input: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub settle_result: Option<String>,
        pub resolved_seq: Option<i64>,
    }
    no_relations!();
}

pub mod wallet_creations {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "wallet_creations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub owner_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idempotency_key: String,
        pub wallet_id: String,
        pub request: Option<String>,
    }
    no_relations!();
}

pub mod teams {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "teams")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(column_type = "Text")]
        pub name: String,
        pub wallet_id: String,
        pub created_us: i64,
    }
    no_relations!();
}

pub mod team_members {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "team_members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub team_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: String,
        pub role: String,
        pub daily_limit_ucr: Option<i64>,
        pub period_limit_ucr: Option<i64>,
        pub added_us: i64,
    }
    no_relations!();
}

pub mod reviews {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reviews")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub wallet_id: String,
        pub thread_id: String,
        pub reporter_id: String,
        #[sea_orm(column_type = "Text")]
        pub task_description: String,
        pub model: Option<String>,
        pub preview_status: String,
        pub thread_length: Option<i64>,
        pub context_size: Option<i64>,
        pub status: String,
        #[sea_orm(column_type = "Text")]
        pub findings: String,
        pub suggested_refund_ucr: i64,
        pub credited_ucr: Option<i64>,
        #[sea_orm(column_type = "Text", nullable)]
        pub note: Option<String>,
        pub grant_id: Option<String>,
        pub created_us: i64,
        pub resolved_us: Option<i64>,
    }
    no_relations!();
}

pub mod api_tokens {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub hash: String,
        pub role: String,
        pub owner_id: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub label: Option<String>,
        pub created_us: i64,
    }
    no_relations!();
}
