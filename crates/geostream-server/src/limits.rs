//! Inbound limits: open connections in total and per IP address, and a per-connection
//! request rate (a token bucket).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Counts open connections (WebSocket and SSE).
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    state: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server holds its maximum.
    Total(usize),
    /// This address holds its maximum.
    PerIp(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Total(n) => write!(
                f,
                "the server holds its maximum of {n} connections; retry later"
            ),
            Refused::PerIp(n) => write!(f, "your address holds its maximum of {n} connections"),
        }
    }
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    ip: IpAddr,
    state: Arc<Mutex<Counts>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut s = self.state.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    /// Limits of `max_total` connections and `max_per_ip` per address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnectionLimits {
            max_total,
            max_per_ip,
            state: Arc::default(),
        }
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, Refused> {
        let mut s = self.state.lock();
        if s.total >= self.max_total {
            return Err(Refused::Total(self.max_total));
        }
        let n = s.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::PerIp(self.max_per_ip));
        }
        *n += 1;
        s.total += 1;
        Ok(ConnectionPermit {
            ip,
            state: self.state.clone(),
        })
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.state.lock().total
    }
}

/// Why a request was refused by [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the rate: a token is available after this long.
    Wait(Duration),
    /// The connection has kept sending more than twice its rate for the configured number
    /// of seconds in a row: close it (4029).
    Flood,
}

/// A token bucket: `rate` tokens per second, holding at most `burst`; and a watch for clients
/// that do not slow down when refused.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Seconds in a row over twice the rate after which the connection is a flood (0: never).
    flood_secs: u32,
    /// The one-second window refusals are counted in.
    window_start: Instant,
    refused_in_window: u32,
    /// Consecutive windows with more refusals than the rate (more than twice the rate sent).
    windows_over: u32,
}

impl RateLimiter {
    /// A full bucket. `flood_secs` of 0 never calls a client a flood.
    pub fn new(rate_per_sec: u32, burst: u32, flood_secs: u32) -> Self {
        let now = Instant::now();
        RateLimiter {
            rate: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            flood_secs,
            window_start: now,
            refused_in_window: 0,
            windows_over: 0,
        }
    }

    /// Takes a token, or says why not.
    pub fn check(&mut self) -> Result<(), Refusal> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Result<(), Refusal> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.refused(now) {
            return Err(Refusal::Flood);
        }
        Err(Refusal::Wait(Duration::from_secs_f64(
            (1.0 - self.tokens) / self.rate,
        )))
    }

    /// Counts a refusal; whether the client is now a flood.
    fn refused(&mut self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.window_start);
        if since >= Duration::from_secs(1) {
            // A window followed directly by this one continues the streak; a quiet gap ends it.
            let over = f64::from(self.refused_in_window) > self.rate;
            self.windows_over = if over && since < Duration::from_secs(2) {
                self.windows_over + 1
            } else {
                0
            };
            self.window_start = now;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        self.flood_secs > 0 && self.windows_over >= self.flood_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_and_freed() {
        let l = ConnectionLimits::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refused::PerIp(2));
        let _p3 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).unwrap_err(), Refused::Total(3));
        drop(p1);
        assert_eq!(l.open(), 2);
        l.admit(a).unwrap();
    }

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut r = RateLimiter::new(10, 5, 0);
        let t0 = Instant::now();
        for _ in 0..5 {
            r.check_at(t0).unwrap();
        }
        let Err(Refusal::Wait(wait)) = r.check_at(t0) else {
            panic!("refused with a wait")
        };
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        r.check_at(t0 + Duration::from_millis(100)).unwrap();
        assert!(r.check_at(t0 + Duration::from_millis(100)).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            r.check_at(later).unwrap();
        }
        assert!(r.check_at(later).is_err());
    }

    #[test]
    fn a_client_that_keeps_flooding_is_called_a_flood() {
        let mut r = RateLimiter::new(10, 10, 3);
        let t0 = Instant::now();
        let mut flood_at = None;
        // 100 requests a second (ten times the rate) for 6 seconds.
        'outer: for ms in (0..6000).step_by(10) {
            if r.check_at(t0 + Duration::from_millis(ms)) == Err(Refusal::Flood) {
                flood_at = Some(ms);
                break 'outer;
            }
        }
        let at = flood_at.expect("a flood");
        assert!((3000..=4100).contains(&at), "called a flood at {at} ms");

        // A burst of the same size once, then quiet, is only rate limited.
        let mut r = RateLimiter::new(10, 10, 3);
        for i in 0..1000 {
            assert_ne!(
                r.check_at(t0 + Duration::from_micros(i)),
                Err(Refusal::Flood)
            );
        }
        for s in 2..10 {
            assert_ne!(r.check_at(t0 + Duration::from_secs(s)), Err(Refusal::Flood));
        }
    }
}
