//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds them at compile
//! time, and cargo does not otherwise know that the SQL files are inputs.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
