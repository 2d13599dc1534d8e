//! The real binary, killed with SIGKILL right after it acknowledged steps, and restarted:
//! every acknowledged step and its outbox messages are still there and get delivered.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::daemon::{console_lines, paystep, start_daemon};
use crate::helpers::{fresh_database_url, Db, ADMIN_TOKEN};
use crate::on_both_databases;

const STEPS: usize = 25;

on_both_databases!(every_acknowledged_step_and_its_messages_survive_sigkill);

async fn every_acknowledged_step_and_its_messages_survive_sigkill(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(db, dir.path()).await;
    let console_path = dir.path().join("console.jsonl");
    let daemon = start_daemon(&database_url, &console_path).await;
    use reqwest::Method;

    let api_key = daemon.create_retailer(None).await.api_key;
    let process_id = daemon
        .open_confirmed_process(
            &console_path,
            &api_key,
            "+491761000001",
            ("100.00", "50.00"),
        )
        .await;

    let mut acknowledged = Vec::new();
    for _ in 0..STEPS {
        let (status, step) = daemon
            .call(
                Method::POST,
                &format!("/v1/processes/{process_id}/steps"),
                &api_key,
                Some(json!({"amount": "1.00"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        acknowledged.push(step["id"].as_str().unwrap().to_string());
    }
    daemon.sigkill().await;

    let daemon = start_daemon(&database_url, &console_path).await;
    let (_, steps) = daemon
        .call(
            Method::GET,
            &format!("/v1/processes/{process_id}/steps"),
            &api_key,
            None,
        )
        .await;
    let steps = steps["steps"].as_array().unwrap();
    for id in &acknowledged {
        let step = steps
            .iter()
            .find(|step| step["id"] == id.as_str())
            .expect("an acknowledged step survived");
        assert_eq!(step["status"], "charged");
    }
    let (_, process) = daemon
        .call(
            Method::GET,
            &format!("/v1/processes/{process_id}"),
            &api_key,
            None,
        )
        .await;
    assert_eq!(process["charged"], format!("{STEPS}.00"));

    // Every charge's execution message and receipt was committed with it, and the restarted
    // daemon delivers whatever the killed one had not.
    // Distinct message ids per kind: a message delivered twice around the kill counts once.
    let delivered = |kind: &str| {
        console_lines(&console_path)
            .iter()
            .filter(|m| m["kind"] == kind && m["process_id"] == process_id.as_str())
            .map(|m| m["message_id"].as_str().unwrap().to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    // The release and each step: an execution message and a receipt for every one.
    let (execution_messages, receipts) = (STEPS + 1, STEPS + 1);
    for _ in 0..1000 {
        if delivered("execution_message") >= execution_messages && delivered("receipt") >= receipts
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered("execution_message"), execution_messages);
    assert_eq!(delivered("receipt"), receipts);

    let (status, report) = daemon
        .call(Method::GET, "/admin/v1/ledger/verify", ADMIN_TOKEN, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report:#}");
    daemon.sigkill().await;
    // The CLI checks the same invariants against the database directly.
    let verify = paystep(&database_url)
        .args(["ledger", "verify"])
        .output()
        .await
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
