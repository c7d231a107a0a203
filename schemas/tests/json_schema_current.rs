//! The checked-in JSON Schema files must match the Rust wire types.
//! Regenerate with `QEFLEET_BLESS=1 cargo test -p qefleet-schemas --test json_schema_current`.

use std::path::PathBuf;

#[test]
fn checked_in_json_schemas_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let bless = std::env::var_os("QEFLEET_BLESS").is_some();
    for (name, schema) in qefleet_schemas::json_schemas() {
        let rendered = serde_json::to_string_pretty(&schema).expect("schema renders") + "\n";
        let path = dir.join(name);
        if bless {
            std::fs::write(&path, &rendered).expect("write schema");
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == rendered,
            "{} is stale: regenerate with QEFLEET_BLESS=1 cargo test -p qefleet-schemas --test json_schema_current",
            path.display()
        );
    }
}
