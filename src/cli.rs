//! The command line: `serve`, `migrate`, `check-config`, and operator commands that work on
//! the database directly with the same configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::audit::Origin;
use crate::clock::{Clock, SystemClock};
use crate::config::{LogFormat, Settings};
use crate::domain::Currency;
use crate::engine::Engine;
use crate::http::admin::{CreateCustomerBody, CreateRetailerBody};
use crate::outbox::dead_letters::{self, RequeueOutcome};
use crate::startup::{build_channels, configured_channels, Application};
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "paystep",
    version,
    about = "The accounting server for stepwise mobile payments"
)]
pub struct Cli {
    /// A configuration file laid over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon: HTTP API, confirmation pages, outbox and expiry workers.
    Serve,
    /// Applies the database migrations.
    Migrate,
    /// Loads the configuration, builds every channel and runs its health check.
    CheckConfig,
    /// Customers: add or show.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Adds credit to a customer.
    Deposit(DepositArgs),
    /// Retailers: add.
    #[command(subcommand)]
    Retailer(RetailerCommand),
    /// The ledger: verify its invariants.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// The outbox: list messages (dead letters first of all) and requeue them.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Prints outbox messages as JSON, in queue order.
    List {
        /// queued, delivered or dead.
        #[arg(long, default_value = "dead")]
        status: String,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// The position after which to list.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Puts a dead letter back in the queue.
    Requeue { id: String },
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Adds a customer and prints its id as JSON.
    Add(CustomerArgs),
    /// Prints a customer's balances, holds and open processes as JSON.
    Show { id: String },
}

#[derive(Args)]
struct CustomerArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    msisdn: Option<String>,
    #[arg(long)]
    email: Option<String>,
    #[arg(long)]
    language: Option<String>,
    #[arg(long)]
    preferred_channel: Option<String>,
    /// 4 to 8 digits; stored as an argon2id hash.
    #[arg(long)]
    pin: Option<String>,
}

#[derive(Args)]
struct DepositArgs {
    #[arg(long)]
    customer: String,
    #[arg(long)]
    amount: String,
    #[arg(long)]
    currency: String,
    #[arg(long)]
    reference: Option<String>,
}

#[derive(Subcommand)]
enum RetailerCommand {
    /// Adds a retailer and prints its id, API key (shown once) and webhook secret as JSON.
    Add(RetailerArgs),
    /// Starts a new webhook secret; the previous one signs too for a grace period.
    RotateSecret { id: String },
    /// Replaces the API key (shown once); the old key stops working at once.
    RotateKey { id: String },
}

#[derive(Args)]
struct RetailerArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    webhook_url: Option<String>,
    #[arg(long)]
    msisdn: Option<String>,
    #[arg(long)]
    email: Option<String>,
    /// Channels for execution messages, comma-separated: webhook, sms, email, console.
    #[arg(long, value_delimiter = ',')]
    notify: Vec<String>,
    /// `every_step` (default) or `summary`.
    #[arg(long)]
    receipt_policy: Option<String>,
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Checks every ledger invariant and recomputes the audit log's hash chain, naming the
    /// first broken link; exits 1 when anything does not hold.
    Verify {
        /// A head exported earlier (`SEQ,SEQ,...:DIGEST`, as `ledger export` prints it
        /// under "notarize") that the chains must still hold: a log rewritten since no
        /// longer matches it.
        #[arg(long, value_name = "SEQS:DIGEST")]
        head: Option<String>,
    },
    /// Prints the audit log as JSON lines, then its head (seq and hash) for a notary.
    Export {
        /// Only entries after this seq (an earlier export's head).
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

/// Parses `SEQ,SEQ,...:DIGEST`.
fn parse_head(text: &str) -> anyhow::Result<crate::audit::Notarized> {
    let (seqs, digest) = text.split_once(':').ok_or_else(|| {
        anyhow::anyhow!("--head must be SEQ,SEQ,...:DIGEST, as `ledger export` prints it")
    })?;
    let seqs = seqs
        .split(',')
        .map(|seq| {
            seq.parse::<i64>()
                .map_err(|_| anyhow::anyhow!("--head: {seq:?} is not a sequence number"))
        })
        .collect::<anyhow::Result<Vec<i64>>>()?;
    if digest.len() != 64 || !digest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        anyhow::bail!("--head: the digest must be 64 hexadecimal digits");
    }
    Ok(crate::audit::Notarized {
        seqs,
        digest: digest.to_ascii_lowercase(),
    })
}

/// Writes every chain's entries after `after_seq` as JSON lines, chain by chain, a page at
/// a time, then the heads and what to notarize.
async fn export_audit_log(conn: &mut sqlx::AnyConnection, after_seq: i64) -> anyhow::Result<()> {
    use std::io::Write;
    // The heads first: entries appended while the export runs are left for the next one.
    let heads = crate::audit::heads(conn).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for head in &heads {
        let mut after = after_seq;
        while after < head.seq {
            let page = crate::audit::entries_between(conn, head.chain, after, head.seq).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for entry in &page {
                writeln!(out, "{}", serde_json::to_string(entry)?)?;
            }
        }
    }
    let notarize = crate::audit::notarize(&heads);
    writeln!(
        out,
        "{}",
        json!({"head": {"chains": heads, "notarize": notarize}})
    )?;
    out.flush()?;
    Ok(())
}

pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("paystep: {error}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings);
    match execute(cli.command, settings).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("paystep: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Libraries that log what passes through them at debug level, secrets included: the SMPP
/// codec prints every PDU (a reply's PIN, the bind password). They never log below info,
/// whatever the configured level.
const VERBOSE_WITH_SECRETS: [&str; 2] = ["rusmpp=info", "rusmppc=info"];

fn init_logging(settings: &Settings) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    for directive in VERBOSE_WITH_SECRETS {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    // Logs go to stderr so that stdout carries only console-channel lines and command output.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialise")
    );
}

/// How long `check-config` waits for SMSC links to bind.
const CHECK_BIND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `check-config` is no place to handle customers' messages: refusing them makes the peer
/// deliver them again, to the daemon.
struct RefuseInbound;

#[async_trait::async_trait]
impl paystep_channel_core::InboundSink for RefuseInbound {
    async fn receive(
        &self,
        _message: paystep_channel_core::InboundMessage,
    ) -> Result<(), paystep_channel_core::InboundError> {
        Err(paystep_channel_core::InboundError(
            "check-config takes no messages".into(),
        ))
    }
}

async fn offline_engine(settings: Settings) -> anyhow::Result<Engine> {
    let store = Store::connect(&settings.database).await?;
    if settings.database.migrate_on_start {
        store.migrate().await?;
    }
    // Operator commands start no channel (a deposit must not bind to a carrier); the
    // messages they cause wait in the outbox for the daemon.
    let availability = configured_channels(&settings);
    Ok(Engine::new(
        store,
        Arc::new(settings),
        Arc::new(SystemClock),
        availability,
    ))
}

async fn execute(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            let application = Application::build(settings, Arc::new(SystemClock)).await?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("Shutting down");
                let _ = stop.send(true);
            });
            application.run_until_stopped(stopped).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = Store::connect(&settings.database).await?;
            store.migrate().await?;
            store.close().await;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let channels = build_channels(&settings, Arc::new(RefuseInbound))?;
            // Links bind in the background: give them a bounded moment before judging.
            let deadline = tokio::time::Instant::now() + CHECK_BIND_WAIT;
            let mut healthy = true;
            for (name, channel) in &channels.adapters {
                let mut result = channel.health_check().await;
                while result.is_err() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    result = channel.health_check().await;
                }
                match result {
                    Ok(()) => println!("channel {name}: ok"),
                    Err(error) => {
                        healthy = false;
                        println!("channel {name}: {error}");
                    }
                }
            }
            channels.shutdown().await;
            let store = Store::connect(&settings.database).await?;
            store.ping().await?;
            println!("database: ok");
            Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Customer(CustomerCommand::Add(args)) => {
            let body = CreateCustomerBody {
                msisdn: args.msisdn,
                email: args.email,
                name: args.name,
                language: args.language,
                preferred_channel: args.preferred_channel,
                pin: args.pin,
            };
            let customer = body.into_domain()?;
            let engine = offline_engine(settings).await?;
            let mut tx = engine.store.begin_write().await?;
            let id = engine
                .create_customer(&mut tx, &Origin::operator("cli"), customer)
                .await?;
            tx.commit().await?;
            print_json(&json!({ "id": id }));
            Ok(ExitCode::SUCCESS)
        }
        Command::Customer(CustomerCommand::Show { id }) => {
            let engine = offline_engine(settings).await?;
            let mut conn = engine.store.reader().acquire().await?;
            let summary = engine.customer_summary(&mut conn, &id).await?;
            print_json(&json!(summary));
            Ok(ExitCode::SUCCESS)
        }
        Command::Deposit(args) => {
            let currency = Currency::parse(&args.currency)?;
            let amount = currency.parse_amount(&args.amount, settings.limits.max_amount)?;
            let engine = offline_engine(settings).await?;
            let mut tx = engine.store.begin_write().await?;
            let credit = engine
                .deposit(
                    &mut tx,
                    &Origin::operator("cli"),
                    &args.customer,
                    currency,
                    amount,
                    args.reference.as_deref(),
                )
                .await?;
            tx.commit().await?;
            print_json(
                &json!({"customer_id": args.customer, "currency": currency.code(), "credit": currency.format(credit)}),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Retailer(RetailerCommand::Add(args)) => {
            let body = CreateRetailerBody {
                name: args.name,
                webhook_url: args.webhook_url,
                msisdn: args.msisdn,
                email: args.email,
                notify: Some(args.notify),
                receipt_policy: args.receipt_policy,
            };
            let retailer = body.into_domain()?;
            let engine = offline_engine(settings).await?;
            let mut tx = engine.store.begin_write().await?;
            let credentials = engine
                .create_retailer(&mut tx, &Origin::operator("cli"), retailer)
                .await?;
            tx.commit().await?;
            print_json(&json!(credentials));
            Ok(ExitCode::SUCCESS)
        }
        Command::Retailer(RetailerCommand::RotateKey { id }) => {
            let engine = offline_engine(settings).await?;
            let mut tx = engine.store.begin_write().await?;
            let rotated = engine
                .rotate_api_key(&mut tx, &Origin::operator("cli"), &id)
                .await?;
            tx.commit().await?;
            print_json(&rotated);
            Ok(ExitCode::SUCCESS)
        }
        Command::Retailer(RetailerCommand::RotateSecret { id }) => {
            let engine = offline_engine(settings).await?;
            let mut tx = engine.store.begin_write().await?;
            let rotated = engine
                .rotate_webhook_secret(&mut tx, &Origin::operator("cli"), &id)
                .await?;
            tx.commit().await?;
            print_json(&rotated);
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox(OutboxCommand::List {
            status,
            limit,
            after,
        }) => {
            if !dead_letters::STATUSES.contains(&status.as_str()) {
                anyhow::bail!("--status must be queued, delivered or dead");
            }
            if !(1..=1000).contains(&limit) {
                anyhow::bail!("--limit must be between 1 and 1000");
            }
            let store = Store::connect(&settings.database).await?;
            let mut conn = store.reader().acquire().await?;
            let messages = dead_letters::list(&mut conn, Some(&status), after, limit).await?;
            print_json(&json!({ "messages": messages }));
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox(OutboxCommand::Requeue { id }) => {
            let store = Store::connect(&settings.database).await?;
            let mut tx = store.begin_write().await?;
            let outcome =
                dead_letters::requeue(&mut tx, &Origin::operator("cli"), &id, SystemClock.now_ms())
                    .await?;
            tx.commit().await?;
            match outcome {
                RequeueOutcome::Requeued(message) => {
                    print_json(&json!(message));
                    Ok(ExitCode::SUCCESS)
                }
                RequeueOutcome::NotFound => anyhow::bail!("no outbox message {id}"),
                RequeueOutcome::NotDead(status) => {
                    anyhow::bail!("only dead letters can be requeued; {id} is {status}")
                }
            }
        }
        Command::Ledger(LedgerCommand::Export { after }) => {
            let store = Store::connect(&settings.database).await?;
            let mut conn = store.reader().acquire().await?;
            export_audit_log(&mut conn, after).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ledger(LedgerCommand::Verify { head }) => {
            let notarized = head.as_deref().map(parse_head).transpose()?;
            let store = Store::connect(&settings.database).await?;
            let mut conn = store.reader().acquire().await?;
            let report = crate::ledger::verify_with(&mut conn, notarized.as_ref()).await?;
            print_json(&json!(report));
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
