//! Building and running the application: store, engine, channels, HTTP server, workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use paystep_channels::console::{ConsoleChannel, ConsoleTarget};
use paystep_channels::webhook::{WebhookChannel, WebhookSettings};
use paystep_channels::{Channel, ChannelName};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::engine::{ChannelAvailability, Engine};
use crate::http::{router, AppState};
use crate::outbox::Dispatcher;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    engine: Arc<Engine>,
    channels: HashMap<ChannelName, Arc<dyn Channel>>,
}

/// Builds every configured channel adapter.
pub fn build_channels(
    settings: &Settings,
) -> anyhow::Result<HashMap<ChannelName, Arc<dyn Channel>>> {
    let mut channels: HashMap<ChannelName, Arc<dyn Channel>> = HashMap::new();
    if settings.channels.console.enabled {
        let target = ConsoleTarget::parse(&settings.channels.console.path);
        channels.insert(ChannelName::Console, Arc::new(ConsoleChannel::new(target)));
    }
    let webhook = &settings.channels.webhook;
    if webhook.enabled {
        let adapter = WebhookChannel::new(&WebhookSettings {
            timeout_ms: webhook.timeout_ms,
            connect_timeout_ms: webhook.connect_timeout_ms,
            response_body_max_bytes: webhook.response_body_max_bytes,
        })?;
        channels.insert(ChannelName::Webhook, Arc::new(adapter));
    }
    Ok(channels)
}

impl Application {
    /// Connects, migrates when configured, and binds the listener (port 0 picks a free one).
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<Application> {
        let store = Store::connect(&settings.database).await?;
        if settings.database.migrate_on_start {
            store.migrate().await?;
        }
        let listener = TcpListener::bind(settings.http.listen).await?;
        let channels = build_channels(&settings)?;
        let availability = ChannelAvailability::new(channels.keys().copied().collect());
        let engine = Arc::new(Engine::new(store, Arc::new(settings), clock, availability));
        Ok(Application {
            listener,
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
        let dispatcher = Dispatcher::new(
            engine.store.clone(),
            self.channels,
            settings.outbox.clone(),
            engine.clock.clone(),
        );
        let dispatcher_task = tokio::spawn(dispatcher.run(shutdown.clone()));
        let sweeper_task = tokio::spawn(run_sweeper(engine.clone(), shutdown.clone()));
        tracing::info!(address = %address, "paystep is listening");
        let mut http_shutdown = shutdown.clone();
        axum::serve(
            self.listener,
            router(AppState {
                engine: engine.clone(),
            }),
        )
        .with_graceful_shutdown(async move {
            let _ = http_shutdown.wait_for(|stopped| *stopped).await;
        })
        .await?;
        let _ = dispatcher_task.await;
        let _ = sweeper_task.await;
        engine.store.close().await;
        tracing::info!("paystep stopped");
        Ok(())
    }
}

/// Expires confirmation requests and idle processes on a timer.
async fn run_sweeper(engine: Arc<Engine>, mut shutdown: watch::Receiver<bool>) {
    let interval = Duration::from_millis(engine.settings.engine.sweep_interval_ms);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match engine.expire_due().await {
            // A full batch may mean more is due: go again at once.
            Ok(expired) if expired > 0 => continue,
            Ok(_) => {}
            Err(error) => tracing::error!(error = %error, "Expiry sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}
