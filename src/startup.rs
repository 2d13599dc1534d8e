//! Building and running the application: store, engine, channels, HTTP server, workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use paystep_channels::console::{ConsoleChannel, ConsoleTarget};
use paystep_channels::email::{EmailChannel, EmailSettings, EmailTls};
use paystep_channels::sms::{BindMode, SmsChannel, SmsSettings, SmscSettings};
use paystep_channels::webhook::{WebhookChannel, WebhookSettings};
use paystep_channels::{Channel, ChannelName, InboundSink};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::engine::{ChannelAvailability, CoreInbound, Engine};
use crate::http::{router, AppState};
use crate::outbox::Dispatcher;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    engine: Arc<Engine>,
    channels: Channels,
}

/// The running channel adapters, and the SMS links to unbind on the way out.
pub struct Channels {
    pub adapters: HashMap<ChannelName, Arc<dyn Channel>>,
    pub sms: Option<Arc<SmsChannel>>,
}

impl Channels {
    pub async fn shutdown(&self) {
        if let Some(sms) = &self.sms {
            sms.shutdown().await;
        }
    }
}

/// The channels the configuration turns on, known without starting any of them.
pub fn configured_channels(settings: &Settings) -> ChannelAvailability {
    let mut names = Vec::new();
    if settings.channels.console.enabled {
        names.push(ChannelName::Console);
    }
    if settings.channels.webhook.enabled {
        names.push(ChannelName::Webhook);
    }
    if settings.channels.sms.is_some() {
        names.push(ChannelName::Sms);
    }
    if settings.channels.email.is_some() {
        names.push(ChannelName::Email);
    }
    ChannelAvailability::new(names)
}

/// Starts every configured channel adapter; SMS links begin to bind in the background and
/// hand what they receive to `inbound`.
pub fn build_channels(
    settings: &Settings,
    inbound: Arc<dyn InboundSink>,
) -> anyhow::Result<Channels> {
    let mut adapters: HashMap<ChannelName, Arc<dyn Channel>> = HashMap::new();
    if settings.channels.console.enabled {
        let target = ConsoleTarget::parse(&settings.channels.console.path);
        adapters.insert(ChannelName::Console, Arc::new(ConsoleChannel::new(target)));
    }
    let webhook = &settings.channels.webhook;
    if webhook.enabled {
        let adapter = WebhookChannel::new(&WebhookSettings {
            timeout_ms: webhook.timeout_ms,
            connect_timeout_ms: webhook.connect_timeout_ms,
            response_body_max_bytes: webhook.response_body_max_bytes,
        })?;
        adapters.insert(ChannelName::Webhook, Arc::new(adapter));
    }
    if let Some(email) = &settings.channels.email {
        let adapter = EmailChannel::new(&email_settings(email))?;
        adapters.insert(ChannelName::Email, Arc::new(adapter));
    }
    let sms = match &settings.channels.sms {
        Some(sms) => {
            let channel = Arc::new(SmsChannel::start(sms_settings(sms), inbound)?);
            adapters.insert(ChannelName::Sms, channel.clone());
            Some(channel)
        }
        None => None,
    };
    Ok(Channels { adapters, sms })
}

fn email_settings(config: &crate::config::EmailSettings) -> EmailSettings {
    EmailSettings {
        host: config.host.clone(),
        port: config.port,
        tls: match config.tls.as_str() {
            "none" => EmailTls::None,
            "tls" => EmailTls::Tls,
            // Validation allows only these three; STARTTLS is the safe default.
            _ => EmailTls::StartTls,
        },
        ca_file: config.ca_file.clone(),
        username: config.username.clone(),
        password: config.password.clone(),
        from: config.from.clone(),
        reply_to: config.reply_to.clone(),
        pool_size: config.pool_size,
        timeout_ms: config.timeout_ms,
    }
}

fn sms_settings(config: &crate::config::SmsSettings) -> SmsSettings {
    SmsSettings {
        source_addr: config.source_addr.clone(),
        source_addr_ton: config.source_addr_ton,
        source_addr_npi: config.source_addr_npi,
        registered_delivery: config.registered_delivery,
        smscs: config
            .smsc
            .iter()
            .map(|smsc| SmscSettings {
                name: smsc.name.clone(),
                host: smsc.host.clone(),
                port: smsc.port,
                tls: smsc.tls,
                ca_file: smsc.ca_file.clone(),
                system_id: smsc.system_id.clone(),
                password: smsc.password.clone(),
                system_type: smsc.system_type.clone(),
                bind: if smsc.bind == "transmitter_receiver" {
                    BindMode::TransmitterReceiver
                } else {
                    BindMode::Transceiver
                },
                window: smsc.window,
                throughput_per_s: smsc.throughput_per_s,
                enquire_link_interval_ms: smsc.enquire_link_interval_ms,
                response_timeout_ms: smsc.response_timeout_ms,
                reconnect_backoff_min_ms: smsc.reconnect_backoff_min_ms,
                reconnect_backoff_max_ms: smsc.reconnect_backoff_max_ms,
            })
            .collect(),
    }
}

impl Application {
    /// Connects, migrates when configured, binds the listener (port 0 picks a free one), and
    /// starts the channels.
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<Application> {
        let store = Store::connect(&settings.database).await?;
        if settings.database.migrate_on_start {
            store.migrate().await?;
        }
        let listener = TcpListener::bind(settings.http.listen).await?;
        let metrics_listener = match settings.http.metrics_listen {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        let availability = configured_channels(&settings);
        let settings = Arc::new(settings);
        let engine = Arc::new(Engine::new(store, settings.clone(), clock, availability));
        let channels = build_channels(&settings, Arc::new(CoreInbound(engine.clone())))?;
        Ok(Application {
            listener,
            metrics_listener,
            engine,
            channels,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// Serves until `shutdown` turns true, then drains in-flight requests and workers.
    pub async fn run_until_stopped(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let engine = self.engine.clone();
        let settings = engine.settings.clone();
        let address = self.local_addr();
        let channels = self.channels;
        let dispatcher = Dispatcher::new(
            engine.store.clone(),
            channels.adapters.clone(),
            settings.outbox.clone(),
            engine.clock.clone(),
        );
        let dispatcher_task = if settings.outbox.deliver {
            tokio::spawn(dispatcher.run(shutdown.clone()))
        } else {
            tracing::info!("outbox.deliver is false: this daemon delivers no messages");
            tokio::spawn(async {})
        };
        let sweeper_task = tokio::spawn(run_sweeper(engine.clone(), shutdown.clone()));
        tracing::info!(address = %address, "paystep is listening");
        let state = AppState::new(engine.clone());
        let metrics_task = self.metrics_listener.map(|listener| {
            let metrics = crate::http::metrics_router(state.clone());
            tokio::spawn(serve(listener, metrics, shutdown.clone()))
        });
        serve(self.listener, router(state), shutdown.clone()).await?;
        if let Some(metrics_task) = metrics_task {
            let _ = metrics_task.await;
        }
        let _ = dispatcher_task.await;
        let _ = sweeper_task.await;
        channels.shutdown().await;
        engine.store.close().await;
        tracing::info!("paystep stopped");
        Ok(())
    }
}

/// Serves `router` on `listener` until `shutdown`, with each request's peer address known
/// (the throttle counts failures per client).
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|stopped| *stopped).await;
    })
    .await
}

/// Expires confirmation requests and idle processes, and prunes what is past its
/// retention, on a timer.
async fn run_sweeper(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(engine.settings.engine.sweep_interval_ms);
    // Pruning has no hurry: between rounds that found nothing it waits its own, longer
    // interval, so that an idle prune does not take SQLite's writer every sweep.
    let prune_interval = Duration::from_millis(engine.settings.retention.interval_ms);
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let expired = engine.expire_due().await.unwrap_or_else(|error| {
            tracing::error!(error = %error, "Expiry sweep failed");
            0
        });
        let mut pruned = 0;
        if tokio::time::Instant::now() >= next_prune {
            pruned = engine.prune_due().await.unwrap_or_else(|error| {
                tracing::error!(error = %error, "Retention sweep failed");
                0
            });
            if pruned == 0 {
                next_prune = tokio::time::Instant::now() + prune_interval;
            }
        }
        // Work done may mean more is due: go again at once.
        if expired > 0 || pruned > 0 {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}
