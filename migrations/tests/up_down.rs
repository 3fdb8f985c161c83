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

async fn up_down_up(db: &DatabaseConnection) {
    Migrator::up(db, None).await.expect("up");
    assert_eq!(tables_present(db).await, TABLES);
    // One step down removes only the last migration's tables.
    Migrator::down(db, Some(1)).await.expect("down one");
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
