//! Throttling of guesses: wrong API keys, wrong admin tokens, unknown confirmation tokens
//! and wrong PINs, per client address and per target, with governor's GCRA limiters.
//!
//! Only failures count. A request is checked first, and only when it fails is it counted;
//! once a source or a target has failed more often than its quota allows, further failures
//! are answered 429 with `Retry-After` instead of 401/404/422. So a retailer with a good key
//! is never slowed by an attacker behind the same address (a carrier's NAT, a shared
//! proxy), and thousands of good steps per second cost no limiter state at all. Every
//! secret here is 256 random bits, except PINs, which the per-customer lockout in the
//! engine stops before they are checked; these limits bound the load and the noise.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::SecuritySettings;

/// What was guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guess {
    ApiKey,
    AdminToken,
    ConfirmationToken,
    Pin,
}

impl Guess {
    pub fn as_str(self) -> &'static str {
        match self {
            Guess::ApiKey => "api_key",
            Guess::AdminToken => "admin_token",
            Guess::ConfirmationToken => "confirmation_token",
            Guess::Pin => "pin",
        }
    }
}

/// How long to wait before failing again is answered normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    pub seconds: u64,
}

/// The limiters forget keys that are back to full quota every this many failures, so an
/// attacker spraying addresses or tokens cannot grow them without bound.
const FAILURES_BETWEEN_CLEANUPS: u64 = 4096;

/// How many characters of a guessed secret identify its target: enough to tell one
/// hammered key from another, far too few to help anyone guess it.
const TARGET_PREFIX_CHARS: usize = 6;

pub struct Throttle {
    per_source: DefaultKeyedRateLimiter<(Guess, IpAddr)>,
    per_target: DefaultKeyedRateLimiter<(Guess, String)>,
    trusted_proxies: Vec<IpNet>,
    failures: AtomicU64,
}

fn quota(burst: u32, per_minute: u32) -> Quota {
    let per_minute = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl Throttle {
    pub fn new(settings: &SecuritySettings) -> Throttle {
        Throttle {
            per_source: RateLimiter::keyed(quota(
                settings.failures_per_source_burst,
                settings.failures_per_source_per_minute,
            )),
            per_target: RateLimiter::keyed(quota(
                settings.failures_per_target_burst,
                settings.failures_per_target_per_minute,
            )),
            trusted_proxies: settings.trusted_proxy_nets(),
            failures: AtomicU64::new(0),
        }
    }

    /// Counts one failed guess from `source` at `target`. `Err` when either is over its
    /// quota: the caller answers 429 with the wait it gives.
    pub fn failure(&self, guess: Guess, source: IpAddr, target: &str) -> Result<(), RetryAfter> {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed);
        if failures.is_multiple_of(FAILURES_BETWEEN_CLEANUPS) {
            self.per_source.retain_recent();
            self.per_target.retain_recent();
        }
        let target: String = target.chars().take(TARGET_PREFIX_CHARS).collect();
        let by_source = self.per_source.check_key(&(guess, source));
        let by_target = self.per_target.check_key(&(guess, target));
        let now = DefaultClock::default().now();
        let wait = [by_source.err(), by_target.err()]
            .into_iter()
            .flatten()
            .map(|not_until| not_until.wait_time_from(now))
            .max();
        match wait {
            None => Ok(()),
            Some(wait) => Err(RetryAfter {
                seconds: seconds_rounded_up(wait),
            }),
        }
    }

    /// The client's address: the peer's, or behind a trusted proxy the last address in
    /// `X-Forwarded-For` that is not itself a trusted proxy.
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> IpAddr {
        let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        forwarded
            .iter()
            .rev()
            .map_while(|hop| hop.parse::<IpAddr>().ok())
            .find(|hop| !self.is_trusted(*hop))
            .unwrap_or(peer)
    }

    /// `client_address` for a request's parts.
    pub fn client_of(&self, parts: &Parts) -> IpAddr {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        self.client_address(peer, &parts.headers)
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&address))
    }
}

/// The client's address as the throttle sees it (see `Throttle::client_address`).
pub struct ClientAddress(pub IpAddr);

impl axum::extract::FromRequestParts<super::AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(state.throttle.client_of(parts)))
    }
}

fn seconds_rounded_up(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(trusted: &[&str]) -> SecuritySettings {
        let mut settings = crate::config::Settings::load(None).unwrap().security;
        settings.failures_per_source_burst = 3;
        settings.failures_per_source_per_minute = 1;
        settings.failures_per_target_burst = 100;
        settings.trusted_proxies = trusted.iter().map(|net| net.to_string()).collect();
        settings
    }

    #[test]
    fn failures_over_the_burst_are_refused_with_a_wait() {
        let throttle = Throttle::new(&settings(&[]));
        let source: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.failure(Guess::ApiKey, source, "abcdef"), Ok(()));
        }
        let refused = throttle
            .failure(Guess::ApiKey, source, "abcdef")
            .unwrap_err();
        assert!((1..=60).contains(&refused.seconds), "{refused:?}");
        // Another source, and another kind of guess, have their own quota.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(throttle.failure(Guess::ApiKey, other, "abcdef"), Ok(()));
        assert_eq!(throttle.failure(Guess::Pin, source, "abcdef"), Ok(()));
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct = Throttle::new(&settings(&[]));
        assert_eq!(direct.client_address(Some(proxy), &headers), proxy);
        let behind = Throttle::new(&settings(&["10.0.0.0/8"]));
        assert_eq!(
            behind.client_address(Some(proxy), &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A client cannot pose as another by sending the header itself past no proxy.
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(behind.client_address(Some(stranger), &headers), stranger);
    }
}
