//! The SMS channel: an SMPP 3.4 ESME on rusmpp/rusmppc that binds to one or more SMSCs,
//! submits outbound messages, and turns `deliver_sm` into domain messages (MO texts parsed
//! with `grammar`, delivery receipts).

pub mod grammar;

/// The whole channel's settings.
#[derive(Debug, Clone)]
pub struct SmsSettings {
    /// The short code or number customers reply to.
    pub source_addr: String,
    pub source_addr_ton: u8,
    pub source_addr_npi: u8,
    /// Ask SMSCs for delivery receipts.
    pub registered_delivery: bool,
    pub smscs: Vec<SmscSettings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    Transceiver,
    TransmitterReceiver,
}

/// One SMSC link.
#[derive(Clone)]
pub struct SmscSettings {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub bind: BindMode,
    /// Unacknowledged submits in flight at most.
    pub window: usize,
    /// Submits per second at most.
    pub throughput_per_s: u32,
    pub enquire_link_interval_ms: u64,
    pub response_timeout_ms: u64,
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
}

// The password is a secret: never print it.
impl std::fmt::Debug for SmscSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmscSettings")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("bind", &self.bind)
            .field("window", &self.window)
            .field("throughput_per_s", &self.throughput_per_s)
            .finish_non_exhaustive()
    }
}
