//! Throttling of guesses: wrong API keys, wrong admin tokens, unknown confirmation tokens
//! and wrong PINs, per client address and per target, with governor's GCRA limiters.
//!
//! Only failures count. A request is checked first, and only when it fails is it counted;
//! once a source or a target has failed more often than its quota allows, further failures
//! are answered 429 with `Retry-After` instead of 401/404/422. So a retailer with a good key
//! is never slowed by an attacker behind the same address (a carrier's NAT, a shared
//! proxy), and thousands of good steps per second cost no limiter state at all. API keys
//! and confirmation tokens are 256 random bits: for them the limits bound the noise.
//!
//! The admin token is chosen by the operator and PINs are short, so for those two a source
//! that is over its quota is refused before anything is checked (`blocked`): there, a right
//! guess from a throttled address is not let through, and no hash is spent on it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// The token in a channel peer's URL (`/peers/{channel}/{token}`).
    PeerToken,
}

impl Guess {
    pub fn as_str(self) -> &'static str {
        match self {
            Guess::ApiKey => "api_key",
            Guess::AdminToken => "admin_token",
            Guess::ConfirmationToken => "confirmation_token",
            Guess::Pin => "pin",
            Guess::PeerToken => "peer_token",
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

/// How many characters of a presented secret group its tries as one target: repeated
/// tries of one key or link count together, and the prefix tells nobody anything.
const TARGET_PREFIX_CHARS: usize = 6;

/// The most sources remembered as blocked at once; past it, expired blocks are dropped,
/// and failures are still answered 429 by the limiters themselves.
const BLOCKED_SOURCES_MAX: usize = 100_000;

pub struct Throttle {
    per_source: DefaultKeyedRateLimiter<(Guess, IpAddr)>,
    per_target: DefaultKeyedRateLimiter<(Guess, String)>,
    /// Sources over their quota, until when: checked before a guess is even looked at.
    blocked: Mutex<HashMap<(Guess, IpAddr), Instant>>,
    trusted_proxies: Vec<IpNet>,
    failures: AtomicU64,
}

/// The address a source is counted under: an IPv6 client controls a whole /64, so that
/// is one source; an IPv4 address is one source.
fn source_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked above")),
        v4 => v4,
    }
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
            blocked: Mutex::new(HashMap::new()),
            trusted_proxies: settings.trusted_proxy_nets(),
            failures: AtomicU64::new(0),
        }
    }

    /// How long `source` must still wait when it is over its quota for `guess`.
    pub fn blocked(&self, guess: Guess, source: IpAddr) -> Option<RetryAfter> {
        let key = (guess, source_key(source));
        let mut blocked = self
            .blocked
            .lock()
            .expect("the block list is never poisoned");
        let until = *blocked.get(&key)?;
        let now = Instant::now();
        if until <= now {
            blocked.remove(&key);
            return None;
        }
        Some(RetryAfter {
            seconds: seconds_rounded_up(until - now),
        })
    }

    fn block(&self, key: (Guess, IpAddr), wait: Duration) {
        let mut blocked = self
            .blocked
            .lock()
            .expect("the block list is never poisoned");
        let now = Instant::now();
        if blocked.len() >= BLOCKED_SOURCES_MAX {
            blocked.retain(|_, until| *until > now);
        }
        if blocked.len() < BLOCKED_SOURCES_MAX {
            blocked.insert(key, now + wait);
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
        let source = (guess, source_key(source));
        let by_source = self.per_source.check_key(&source);
        let by_target = self.per_target.check_key(&(guess, target));
        let now = DefaultClock::default().now();
        if let Err(not_until) = &by_source {
            self.block(source, not_until.wait_time_from(now));
        }
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
            .map_while(|hop| parse_hop(hop))
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

/// An `X-Forwarded-For` entry: an address, or an address with a port (`[v6]:port` too).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|address| address.ip()))
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
        // The source is blocked for that guess from now on, before anything is checked.
        assert!(throttle.blocked(Guess::ApiKey, source).is_some());
        assert!(throttle.blocked(Guess::ApiKey, other).is_none());
    }

    #[test]
    fn one_ipv6_network_is_one_source() {
        let throttle = Throttle::new(&settings(&[]));
        for host in 1..=4 {
            let address: IpAddr = format!("2001:db8::{host}").parse().unwrap();
            let _ = throttle.failure(Guess::AdminToken, address, "admin");
        }
        let same_network: IpAddr = "2001:db8::99".parse().unwrap();
        assert!(throttle.blocked(Guess::AdminToken, same_network).is_some());
        let elsewhere: IpAddr = "2001:db8:1::1".parse().unwrap();
        assert!(throttle.blocked(Guess::AdminToken, elsewhere).is_none());
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "203.0.113.9:5123, 10.0.0.2".parse().unwrap(),
        );
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
