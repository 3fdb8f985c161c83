//! Every migration runs up, down and up again, on SQLite and (with
//! `CREDITS_TEST_DATABASE_URL`) on PostgreSQL in a schema of its own.

use migration::{Migrator, MigratorTrait, SchemaManager};
use sea_orm_migration::sea_orm::{ConnectionTrait, Database, DatabaseConnection};

const TABLES: &[&str] = &[
    "plans",
    "bundles",
    "wallets",
    "ledger",
    "usage_events",
    "grants",
    "reservations",
    "wallet_creations",
    "teams",
    "team_members",
    "reviews",
    "api_tokens",
];

async fn tables_present(db: &DatabaseConnection) -> Vec<&'static str> {
    let manager = SchemaManager::new(db);
    let mut present = Vec::new();
    for table in TABLES {
        if manager.has_table(*table).await.expect("probe table") {
            present.push(*table);
        }
    }
    present
}

/// The usage indexes the covering-index migration swaps: (before, after).
const SWAPPED_INDEXES: &[(&str, &str)] = &[
    ("usage_wallet_at", "usage_wallet_at_cover"),
    ("usage_model_at", "usage_model_at_cover"),
];

async fn usage_indexes(db: &DatabaseConnection) -> Vec<&'static str> {
    let manager = SchemaManager::new(db);
    let mut present = Vec::new();
    for (before, after) in SWAPPED_INDEXES {
        for name in [before, after] {
            if manager
                .has_index("usage_events", name)
                .await
                .expect("probe index")
            {
                present.push(*name);
            }
        }
    }
    present
}

async fn creation_request(db: &DatabaseConnection) -> bool {
    SchemaManager::new(db)
        .has_column("wallet_creations", "request")
        .await
        .expect("probe column")
}

async fn retired_plans(db: &DatabaseConnection) -> bool {
    SchemaManager::new(db)
        .has_column("plans", "retired")
        .await
        .expect("probe column")
}

async fn reservations_due(db: &DatabaseConnection) -> bool {
    SchemaManager::new(db)
        .has_index("reservations", "reservations_due")
        .await
        .expect("probe index")
}

async fn grants_review(db: &DatabaseConnection) -> bool {
    SchemaManager::new(db)
        .has_index("grants", "grants_review")
        .await
        .expect("probe index")
}

/// Which index pages due wallets: (next_due_us, id) and (next_due_us) alone.
async fn due_indexes(db: &DatabaseConnection) -> (bool, bool) {
    let manager = SchemaManager::new(db);
    let has = |name| manager.has_index("wallets", name);
    (
        has("wallets_next_due_id").await.expect("probe index"),
        has("wallets_next_due").await.expect("probe index"),
    )
}

async fn members_version(db: &DatabaseConnection) -> bool {
    SchemaManager::new(db)
        .has_column("wallets", "members_version")
        .await
        .expect("probe column")
}

/// The scheduled plan of each wallet, by id.
async fn scheduled_plans(db: &DatabaseConnection) -> Vec<(String, Option<String>)> {
    let rows = db
        .query_all_raw(sea_orm_migration::sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT id, scheduled_plan_id FROM wallets ORDER BY id",
        ))
        .await
        .expect("read wallets");
    rows.iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect()
}

async fn up_down_up(db: &DatabaseConnection) {
    // Wallets stored before the scheduled plan had a column get it from their snapshot.
    Migrator::up(db, Some(9)).await.expect("up to 9");
    for (id, snapshot) in [
        ("wal_a", r#"{"scheduled_plan_id":"free"}"#),
        ("wal_b", r#"{"scheduled_plan_id":null}"#),
    ] {
        db.execute_unprepared(&format!(
            "INSERT INTO wallets (id, owner_id, timezone, plan_id, created_us, version, seq, \
             snapshot) VALUES ('{id}', 'o', 'UTC', 'pro', 0, 0, 0, '{snapshot}')"
        ))
        .await
        .expect("insert a wallet");
    }
    Migrator::up(db, None).await.expect("up");
    assert_eq!(
        scheduled_plans(db).await,
        [
            ("wal_a".to_owned(), Some("free".to_owned())),
            ("wal_b".to_owned(), None)
        ]
    );
    db.execute_unprepared("DELETE FROM wallets")
        .await
        .expect("delete wallets");
    assert_eq!(tables_present(db).await, TABLES);
    assert_eq!(
        usage_indexes(db).await,
        ["usage_wallet_at_cover", "usage_model_at_cover"]
    );
    assert!(!reservations_due(db).await);
    assert!(grants_review(db).await);
    let manager = SchemaManager::new(db);
    assert!(manager.has_table("plan_credit_history").await.unwrap());
    assert_eq!(due_indexes(db).await, (true, false));
    // One step down pages due wallets by their instant alone again, and only that.
    Migrator::down(db, Some(1)).await.expect("down due index");
    assert_eq!(due_indexes(db).await, (false, true));
    assert!(manager.has_table("plan_credit_history").await.unwrap());
    // One step down drops the plans' credit history, and only that.
    Migrator::down(db, Some(1))
        .await
        .expect("down credit history");
    assert!(!manager.has_table("plan_credit_history").await.unwrap());
    assert_eq!(tables_present(db).await, TABLES);
    // One step down drops the wallets' scheduled plan column, and only that.
    Migrator::down(db, Some(1))
        .await
        .expect("down scheduled plan");
    assert!(grants_review(db).await);
    // One step down drops the grants' review index, and only that.
    Migrator::down(db, Some(1))
        .await
        .expect("down grants review");
    assert!(!grants_review(db).await);
    assert!(!reservations_due(db).await);
    // One step down brings back the reservations' expiry index, and only that.
    Migrator::down(db, Some(1))
        .await
        .expect("down reservations index");
    assert!(reservations_due(db).await);
    assert!(members_version(db).await);
    // One step down drops the wallets' members version, and only that.
    Migrator::down(db, Some(1))
        .await
        .expect("down members version");
    assert!(!members_version(db).await);
    assert!(retired_plans(db).await);
    // One step down drops the plans' retired mark, and only that.
    Migrator::down(db, Some(1)).await.expect("down retired");
    assert!(!retired_plans(db).await);
    assert!(creation_request(db).await);
    // One step down drops the createWallet request column, and only that.
    Migrator::down(db, Some(1)).await.expect("down one");
    assert!(!creation_request(db).await);
    assert_eq!(tables_present(db).await, TABLES);
    // The next swaps the covering indexes back, and only that.
    Migrator::down(db, Some(1)).await.expect("down two");
    assert_eq!(tables_present(db).await, TABLES);
    assert_eq!(
        usage_indexes(db).await,
        ["usage_wallet_at", "usage_model_at"]
    );
    // The next step removes only its migration's tables.
    Migrator::down(db, Some(1)).await.expect("down three");
    assert_eq!(tables_present(db).await, &TABLES[..8]);
    Migrator::down(db, None).await.expect("down all");
    assert!(tables_present(db).await.is_empty());
    Migrator::up(db, None).await.expect("up again");
    assert_eq!(tables_present(db).await, TABLES);
    assert!(
        Migrator::get_pending_migrations(db)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn sqlite_up_down_up() {
    let path = std::env::temp_dir().join(format!("credits-migration-{}.db", std::process::id()));
    let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("open sqlite");
    up_down_up(&db).await;
    db.close().await.ok();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn postgres_up_down_up() {
    let Ok(base) = std::env::var("CREDITS_TEST_DATABASE_URL") else {
        eprintln!("CREDITS_TEST_DATABASE_URL not set: PostgreSQL run skipped");
        return;
    };
    let schema = format!("m_{}", std::process::id());
    let admin = Database::connect(&base).await.expect("connect");
    admin
        .execute_unprepared(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    let db = Database::connect(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
        .await
        .expect("connect schema");
    up_down_up(&db).await;
    db.close().await.ok();
    admin
        .execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .expect("drop schema");
}
