//! `graphql/schema.graphql` is generated from the code: this test fails when the checked-in
//! file is stale, and rewrites it when `UPDATE_SCHEMA=1` is set.

#[test]
fn checked_in_schema_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../graphql/schema.graphql");
    let sdl = credits_graphql::sdl();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &sdl).expect("write graphql/schema.graphql");
        return;
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == sdl,
        "graphql/schema.graphql is stale: run `UPDATE_SCHEMA=1 cargo test -p credits-graphql --test schema`"
    );
}
