//! The profile JSON Schema, generated from the model (JSON Schema draft-07, the draft editors complete best).

use machine_model::Profile;

/// The schema file's path relative to the repository root.
pub const PATH: &str = "schemas/profile.schema.json";

/// The schema as pretty JSON with a final newline.
pub fn render() -> String {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let mut schema = generator.into_root_schema_for::<Profile>();
    schema.insert(
        "$id".into(),
        "https://machine-model.local/schemas/profile.schema.json".into(),
    );
    schema.insert("title".into(), "Machine profile".into());
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serialises");
    text.push('\n');
    text
}
