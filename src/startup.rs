//! Building and running the application: store, engine, channels, HTTP server, workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use paystep_channels::email::EmailChannel;
use paystep_channels::sms::SmsChannel;
use paystep_channels::voice::VoiceChannel;
use paystep_channels::wap_push::WapPushChannel;
use paystep_channels::webhook::WebhookChannel;
use paystep_channels::{Channel, ChannelName, InboundSink};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

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

/// The running channel adapters.
pub struct Channels {
    pub adapters: HashMap<ChannelName, Arc<dyn Channel>>,
}

impl Channels {
    /// Lets every adapter say goodbye to its peer (SMS links unbind).
    pub async fn shutdown(&self) {
        for adapter in self.adapters.values() {
            adapter.shutdown().await;
        }
    }
}

/// The channels the configuration turns on, known without starting any of them.
pub fn configured_channels(settings: &Settings) -> ChannelAvailability {
    let channels = &settings.channels;
    let mut names = Vec::new();
    if channels.console.enabled {
        names.push(ChannelName::Console);
    }
    if channels.webhook.enabled {
        names.push(ChannelName::Webhook);
    }
    if channels.sms.is_some() {
        names.push(ChannelName::Sms);
    }
    if channels.email.is_some() {
        names.push(ChannelName::Email);
    }
    if channels.wap_push.is_some() {
        names.push(ChannelName::WapPush);
    }
    if channels.voice.is_some() {
        names.push(ChannelName::Voice);
    }
    ChannelAvailability::new(names)
}

/// Starts every configured channel adapter from its own settings; SMS links begin to bind in
/// the background and hand what they receive to `inbound`.
pub fn build_channels(
    settings: &Settings,
    inbound: Arc<dyn InboundSink>,
) -> anyhow::Result<Channels> {
    let channels = &settings.channels;
    let mut adapters: HashMap<ChannelName, Arc<dyn Channel>> = HashMap::new();
    let mut add = |adapter: Arc<dyn Channel>| {
        adapters.insert(adapter.name(), adapter);
    };
    if let Some(console) = channels.console.build() {
        add(Arc::new(console));
    }
    if channels.webhook.enabled {
        add(Arc::new(WebhookChannel::new(&channels.webhook)?));
    }
    if let Some(email) = &channels.email {
        add(Arc::new(EmailChannel::new(email)?));
    }
    if let Some(wap_push) = &channels.wap_push {
        add(Arc::new(WapPushChannel::new(wap_push)?));
    }
    if let Some(voice) = &channels.voice {
        add(Arc::new(VoiceChannel::new(
            voice,
            &settings.http.public_url,
        )?));
    }
    if let Some(sms) = &channels.sms {
        add(Arc::new(SmsChannel::start(sms.clone(), inbound)?));
    }
    Ok(Channels { adapters })
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
        )
        .with_push_fallback_after_s(
            settings
                .channels
                .wap_push
                .as_ref()
                .map_or(0, |wap_push| wap_push.fallback_after_s),
        );
        // The workers die with this future: dropped (a crash in the simulation, an aborted
        // task), it takes them along rather than leaving them on a store it no longer owns.
        let dispatcher_task = AbortOnDropHandle::new(if settings.outbox.deliver {
            tokio::spawn(dispatcher.run(shutdown.clone()))
        } else {
            tracing::info!("outbox.deliver is false: this daemon delivers no messages");
            tokio::spawn(async {})
        });
        let sweeper_task =
            AbortOnDropHandle::new(tokio::spawn(run_sweeper(engine.clone(), shutdown.clone())));
        tracing::info!(address = %address, "paystep is listening");
        let state =
            AppState::new(engine.clone()).with_peer_channels(Arc::new(channels.adapters.clone()));
        let metrics_task = self.metrics_listener.map(|listener| {
            let metrics = crate::http::metrics_router(state.clone());
            AbortOnDropHandle::new(tokio::spawn(serve(listener, metrics, shutdown.clone())))
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
