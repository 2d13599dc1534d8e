//! The audit log: every state change is an entry with its actor, channel, before and
//! after, chained by hashes; the database refuses to change it, `paystep ledger verify`
//! names the first entry someone changed anyway, and an exported head catches a chain
//! rewritten from there on.

use std::process::Output;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::helpers::{eur_process, spawn_app, Db, TestApp, PIN};
use crate::on_both_databases;

on_both_databases!(
    every_state_change_is_chained_in_the_audit_log_with_actor_channel_before_and_after,
    a_tampered_audit_entry_is_named_by_ledger_verify_and_a_rewritten_chain_by_its_exported_head,
    a_balance_or_remaining_amount_changed_behind_the_ledger_is_named_by_ledger_verify,
);

async fn paystep(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paystep"))
        .args(args)
        .env("PAYSTEP__DATABASE__URL", database_url)
        .env("PAYSTEP__LOG__LEVEL", "warn")
        .output()
        .await
        .expect("the paystep binary runs")
}

/// The entries and the head line of `paystep ledger export`.
async fn export(database_url: &str) -> (Vec<Value>, Value) {
    let output = paystep(database_url, &["ledger", "export"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect();
    let head = lines.pop().expect("the head line comes last")["head"].clone();
    (lines, head)
}

/// The hash as the module documents it, computed here independently of the daemon's code:
/// SHA-256 over the JSON array of the fields.
fn expected_hash(entry: &Value) -> String {
    let canonical = serde_json::json!([
        entry["chain"],
        entry["seq"],
        entry["prev_hash"],
        entry["created_at_ms"],
        entry["actor"],
        entry["channel"],
        entry["action"],
        entry["subject_kind"],
        entry["subject_id"],
        entry["state_before"],
        entry["state_after"],
    ]);
    format!("{:x}", Sha256::digest(canonical.to_string().as_bytes()))
}

/// A customer with a PIN, a process confirmed after one wrong PIN, two steps and a close.
async fn some_history(app: &TestApp) -> (String, String) {
    let retailer = app.create_retailer().await;
    let customer_id = app.create_customer("+491790000001", "40.00").await;
    let process = app
        .open_process(&retailer, eur_process("+491790000001", "15.00"))
        .await;
    let process_id = process["id"].as_str().unwrap().to_string();
    let link = app.confirmation_link(&process_id, 1).await;
    let (status, _) = app.answer_page(&link, "confirm", Some("0000")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a wrong PIN");
    let (status, page) = app.answer_page(&link, "confirm", Some(PIN)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    for amount in ["2.50", "3.00"] {
        let charged = app.step(&retailer, &process_id, amount).await;
        assert_eq!(charged.status, StatusCode::CREATED, "{}", charged.body);
    }
    let closed = app
        .post(
            &retailer,
            &format!("/v1/processes/{process_id}/close"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.body);
    (customer_id, process_id)
}

async fn every_state_change_is_chained_in_the_audit_log_with_actor_channel_before_and_after(
    db: Db,
) {
    let app = spawn_app(db).await;
    let (customer_id, process_id) = some_history(&app).await;
    let url = app.engine.settings.database.url.clone();
    let (entries, head) = export(&url).await;

    // The chains, recomputed here: in each, every entry follows the one before, and the
    // head names the last; together they hold every entry.
    let chains = head["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 16);
    let mut seen = 0;
    for chain in chains {
        let mut prev_hash = "0".repeat(64);
        let mut seq = 0;
        for entry in entries
            .iter()
            .filter(|entry| entry["chain"] == chain["chain"])
        {
            seq += 1;
            assert_eq!(entry["seq"], seq);
            assert_eq!(entry["prev_hash"], prev_hash.as_str());
            assert_eq!(entry["hash"], expected_hash(entry).as_str(), "{entry:#}");
            prev_hash = entry["hash"].as_str().unwrap().to_string();
        }
        assert_eq!(chain["seq"], seq);
        assert_eq!(chain["hash"], prev_hash.as_str());
        seen += seq;
    }
    assert_eq!(seen, entries.len() as i64);
    // A process's entries and its steps' are in one chain, in order.
    let process_chains: std::collections::HashSet<String> = entries
        .iter()
        .filter(|entry| entry["subject_id"] == process_id.as_str())
        .map(|entry| entry["chain"].to_string())
        .collect();
    assert_eq!(process_chains.len(), 1, "{process_chains:?}");

    let find = |action: &str| -> &Value {
        entries
            .iter()
            .find(|entry| entry["action"] == action)
            .unwrap_or_else(|| panic!("no {action} entry in {entries:#?}"))
    };
    let state = |entry: &Value, side: &str| -> Value {
        serde_json::from_str(entry[side].as_str().unwrap()).unwrap()
    };
    let created = find("customer.created");
    assert_eq!(created["actor"], "operator");
    assert_eq!(created["channel"], "admin_api");
    assert_eq!(state(created, "state_after")["pin_set"], true);
    let deposit = find("transfer.deposit");
    assert_eq!(deposit["subject_id"], customer_id.as_str());
    assert_eq!(state(deposit, "state_before")["credit"]["balance"], 0);
    assert_eq!(state(deposit, "state_after")["credit"]["balance"], 4000);

    let wrong = find("pin.wrong");
    assert_eq!(wrong["actor"], format!("customer:{customer_id}").as_str());
    assert_eq!(state(wrong, "state_before")["pin_failures"], 0);
    assert_eq!(state(wrong, "state_after")["pin_failures"], 1);
    assert!(
        !wrong.to_string().contains("0000"),
        "never the PIN: {wrong}"
    );
    find("pin.accepted");

    let release = find("transfer.release");
    assert_eq!(release["subject_id"], process_id.as_str());
    assert_eq!(state(release, "state_before")["debit"]["balance"], 4000);
    assert_eq!(state(release, "state_after")["debit"]["balance"], 2500);
    assert_eq!(state(release, "state_after")["credit"]["balance"], 1500);

    let confirmed = find("process.confirmed");
    assert_eq!(
        state(confirmed, "state_before")["status"],
        "awaiting_confirmation"
    );
    assert_eq!(state(confirmed, "state_after")["status"], "active");

    let steps: Vec<&Value> = entries
        .iter()
        .filter(|entry| entry["action"] == "transfer.step")
        .collect();
    assert_eq!(steps.len(), 2);
    assert!(steps
        .iter()
        .all(|entry| entry["actor"].as_str().unwrap().starts_with("retailer:")));
    assert_eq!(state(steps[1], "state_after")["debit"]["balance"], 950);

    let closed = find("process.closed");
    assert_eq!(state(closed, "state_before")["status"], "active");
    assert_eq!(state(closed, "state_after")["status"], "closed");
    let returned = find("transfer.return");
    assert_eq!(state(returned, "state_after")["credit"]["balance"], 3450);

    let verified = paystep(&url, &["ledger", "verify"]).await;
    assert!(verified.status.success(), "{verified:?}");
    app.assert_ledger_holds().await;
}

/// Runs SQL on the app's database as someone with the database's password would.
async fn tamper(db: Db, url: &str, sql: &str) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    match db {
        Db::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await?;
            conn.execute(sql).await?;
        }
        Db::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await?;
            conn.execute(sql).await?;
        }
    }
    Ok(())
}

async fn a_tampered_audit_entry_is_named_by_ledger_verify_and_a_rewritten_chain_by_its_exported_head(
    db: Db,
) {
    let app = spawn_app(db).await;
    some_history(&app).await;
    let url = app.engine.settings.database.url.clone();
    let (entries, head) = export(&url).await;
    let notarized = head["notarize"].as_str().unwrap().to_string();
    let victim = entries
        .iter()
        .find(|entry| entry["action"] == "transfer.step")
        .unwrap();
    let seq = victim["seq"].as_i64().unwrap();
    let chain = victim["chain"].as_i64().unwrap();

    // The database refuses changes and removals.
    let change =
        format!("UPDATE audit_log SET actor = 'nobody' WHERE chain = {chain} AND seq = {seq}");
    let refused = tamper(db, &url, &change).await.unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let removal = format!("DELETE FROM audit_log WHERE chain = {chain} AND seq = {seq}");
    assert!(tamper(db, &url, &removal).await.is_err());
    if db == Db::Postgres {
        assert!(tamper(db, &url, "TRUNCATE audit_log").await.is_err());
    }

    // Someone drops the triggers and changes one entry: verify names it.
    let drop_triggers = match db {
        Db::Sqlite => "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;",
        Db::Postgres => "DROP TRIGGER audit_log_no_update_or_delete ON audit_log;",
    };
    tamper(db, &url, drop_triggers).await.unwrap();
    let forged = victim["state_after"]
        .as_str()
        .unwrap()
        .replace("\"amount\":250", "\"amount\":25");
    assert_ne!(forged, victim["state_after"].as_str().unwrap());
    let forge = format!(
        "UPDATE audit_log SET state_after = '{}' WHERE chain = {chain} AND seq = {seq}",
        forged.replace('\'', "''")
    );
    tamper(db, &url, &forge).await.unwrap();
    let verified = paystep(&url, &["ledger", "verify"]).await;
    assert!(
        !verified.status.success(),
        "a changed entry must fail verify"
    );
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "audit_log_is_an_unbroken_chain")
        .unwrap();
    assert_eq!(check["ok"], false);
    let named = check["violations"][0].as_str().unwrap();
    assert!(
        named.starts_with(&format!("audit entry {chain}/{seq} (transfer.step")),
        "{named}"
    );

    // A thorough forger recomputes every hash from there on: the chain holds again, but
    // not the head exported before.
    let (forged_entries, _) = export(&url).await;
    let mut in_chain: Vec<Value> = forged_entries
        .into_iter()
        .filter(|entry| entry["chain"].as_i64() == Some(chain))
        .collect();
    let mut prev_hash = match seq {
        1 => "0".repeat(64),
        _ => in_chain[seq as usize - 2]["hash"]
            .as_str()
            .unwrap()
            .to_string(),
    };
    let mut rewrite = String::new();
    for entry in in_chain.iter_mut().skip(seq as usize - 1) {
        entry["prev_hash"] = Value::from(prev_hash.clone());
        let hash = expected_hash(entry);
        rewrite.push_str(&format!(
            "UPDATE audit_log SET prev_hash = '{prev_hash}', hash = '{hash}' \
             WHERE chain = {chain} AND seq = {};",
            entry["seq"]
        ));
        prev_hash = hash;
    }
    rewrite.push_str(&format!(
        "UPDATE audit_head SET hash = '{prev_hash}' WHERE chain = {chain};"
    ));
    tamper(db, &url, &rewrite).await.unwrap();
    let rewritten = paystep(&url, &["ledger", "verify"]).await;
    assert!(
        rewritten.status.success(),
        "a consistent rewrite passes without the notarized head: {}",
        String::from_utf8_lossy(&rewritten.stdout)
    );
    let against_head = paystep(&url, &["ledger", "verify", "--head", &notarized]).await;
    assert!(!against_head.status.success());
    let report = String::from_utf8_lossy(&against_head.stdout);
    assert!(
        report.contains("differ from the notarized head"),
        "{report}"
    );
}

/// The ledger's own checks, not only the audit chain's: a balance moved without a transfer
/// and a process's remaining amount changed without its hold are each named.
async fn a_balance_or_remaining_amount_changed_behind_the_ledger_is_named_by_ledger_verify(db: Db) {
    let app = spawn_app(db).await;
    let (customer_id, process_id) = some_history(&app).await;
    let url = app.engine.settings.database.url.clone();
    let clean = paystep(&url, &["ledger", "verify"]).await;
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    let credit = format!(
        "UPDATE accounts SET balance = balance + 1 \
         WHERE kind = 'customer_credit' AND owner_id = '{customer_id}'"
    );
    tamper(db, &url, &credit).await.unwrap();
    // The table's CHECK keeps remaining = released - charged - returned: a forger who
    // wants 0.07 back in the process must say it was never returned.
    let remaining = format!(
        "UPDATE processes SET remaining = remaining + 7, returned = returned - 7 \
         WHERE id = '{process_id}'"
    );
    tamper(db, &url, &remaining).await.unwrap();
    let verified = paystep(&url, &["ledger", "verify"]).await;
    assert!(
        !verified.status.success(),
        "a broken ledger must fail verify"
    );
    let report: Value = serde_json::from_slice(&verified.stdout).unwrap();
    let violations = |name: &str| -> Vec<String> {
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|check| check["name"] == name)
            .unwrap_or_else(|| panic!("a check named {name}: {report}"));
        check["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|violation| violation.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(violations("balances_sum_to_zero_per_currency"), ["EUR: 1"]);
    let balances = violations("balances_equal_their_transfers");
    assert_eq!(balances.len(), 1, "{balances:?}");
    assert!(balances[0].ends_with(" balance 3451"), "{balances:?}");
    assert_eq!(
        violations("every_hold_equals_its_remaining_amount"),
        [format!("{process_id} remaining 7")]
    );
    assert_eq!(
        violations("process_totals_equal_their_transfers"),
        [process_id.as_str()]
    );
    assert_eq!(
        violations("ended_processes_hold_nothing"),
        [format!("{process_id} closed")]
    );
    assert!(violations("audit_log_is_an_unbroken_chain").is_empty());
}
