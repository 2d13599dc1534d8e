//! The OpenAPI document against the API itself: schemathesis (PyPI), an independent
//! property-based tester, generates requests from `/openapi.json` and checks that no
//! answer is a server error and every status is one the document lists.

use std::process::Stdio;

use tokio::process::Command;

use crate::helpers::{eur_process, spawn_app, Db, ADMIN_TOKEN};
use crate::on_both_databases;

on_both_databases!(schemathesis_finds_no_server_error_and_no_undocumented_status);

/// Examples per operation and phase: enough to try every status the document names, few
/// enough that both runs take seconds.
const EXAMPLES_PER_OPERATION: &str = "20";
/// A bound on each run, in case the tool hangs; it is not a timing assertion.
const RUN_TIMEOUT_S: u64 = 300;

async fn schemathesis(
    db: Db,
    spec_url: &str,
    token: &str,
    paths: (&str, &str),
    dir: &std::path::Path,
) {
    let config = dir.join("schemathesis.toml");
    // No cache files in the checkout; the hypothesis database goes to the temp dir too.
    std::fs::write(&config, "[cache]\nenabled = false\n").unwrap();
    let (include, exclude) = paths;
    let run = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["--no-color", "run", spec_url, "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance",
            "--include-path-regex",
            include,
            "--exclude-path-regex",
            exclude,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            EXAMPLES_PER_OPERATION,
            "--seed",
            "42",
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ])
        .env("HYPOTHESIS_STORAGE_DIRECTORY", dir.join("hypothesis"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(RUN_TIMEOUT_S), run)
        .await
        .expect("schemathesis finishes")
        .expect("schemathesis runs (scripts/test.sh installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems in {include}:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cases = generated_cases(&report)
        .unwrap_or_else(|| panic!("schemathesis reports its test cases: {report}"));
    assert!(cases > 0, "schemathesis tested something: {report}");
    // The figure RELIABILITY.md quotes: how many cases each run tried.
    crate::helpers::report_figures(&format!(
        "schemathesis {db:?} {include}: {cases} test cases generated, all passed"
    ));
}

/// The count in schemathesis' summary line `Test cases:` / `N generated, N passed`.
fn generated_cases(report: &str) -> Option<u64> {
    let mut lines = report
        .lines()
        .skip_while(|line| !line.contains("Test cases:"));
    let heading = lines.next()?;
    // The count is on the heading's line or the next one, depending on the version.
    [heading, lines.next().unwrap_or_default()]
        .iter()
        .find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words
                .iter()
                .position(|word| word.starts_with("generated"))?;
            words.get(at.checked_sub(1)?)?.replace(',', "").parse().ok()
        })
}

async fn schemathesis_finds_no_server_error_and_no_undocumented_status(db: Db) {
    let app = spawn_app(db).await;
    let retailer = app.create_retailer().await;
    app.create_customer("+491764000001", "50.00").await;
    app.open_active_process(&retailer, eur_process("+491764000001", "10.00"))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let spec_url = app.url("/openapi.json");
    schemathesis(
        db,
        &spec_url,
        &retailer.api_key,
        ("^/", "^/(admin|metrics)"),
        dir.path(),
    )
    .await;
    schemathesis(
        db,
        &spec_url,
        ADMIN_TOKEN,
        ("^/(admin|metrics)", "^/v1/"),
        dir.path(),
    )
    .await;
    app.assert_ledger_holds().await;
}
