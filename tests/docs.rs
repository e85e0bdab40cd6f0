//! The documentation states what the code does: the error table in README.md is the one
//! the ledger serves (`cells::ledger::ErrorCode::TABLE`).

#[test]
fn readme_error_table_matches_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let table = cells::ledger::ErrorCode::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's error table is stale; replace it with:\n{table}"
    );
}

#[test]
fn readme_starts_with_the_two_commands() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run"))
        .expect(".ci/run is readable");
    let test_command = "cargo test --workspace --release";
    assert!(readme.contains(test_command) && ci.contains(test_command));
    assert!(readme.contains("cargo run --release -- up"));
}
