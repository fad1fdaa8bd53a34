//! `crds/` is generated from the Rust types: this fails when the file is stale.
//! Regenerate with `cargo run -- crd > crds/imageimport.dev_imageimports.yaml`.

#[test]
fn crd_file_is_up_to_date() {
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/imageimport.dev_imageimports.yaml"
    ))
    .unwrap();
    assert!(
        on_disk == imageimport::api::crd_yaml(),
        "crds/imageimport.dev_imageimports.yaml is stale: run `cargo run -- crd > crds/imageimport.dev_imageimports.yaml`"
    );
}
