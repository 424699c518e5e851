//! [`ConnectionRate`]: new connections per minute per IP (`REALTIME_RATE_LIMIT`), on one
//! instance ([`LocalRate`]) or across instances ([`RedisRate`]: a per-minute counter in Redis,
//! with the local limiter applying as well, and alone while Redis is down).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::cluster::{RedisConn, now_ms};

/// Counts new connections per IP.
#[async_trait]
pub trait ConnectionRate: Send + Sync + 'static {
    /// Counts a new connection from `ip`; false past the rate.
    async fn allow(&self, ip: IpAddr) -> bool;
}

/// The rate on this instance (governor's keyed limiter; `0` per minute disables it).
pub struct LocalRate {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl LocalRate {
    /// `per_minute` new connections per IP (`0`: unlimited).
    pub fn new(per_minute: u32) -> LocalRate {
        LocalRate {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
        }
    }

    fn allow_now(&self, ip: IpAddr) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }
}

#[async_trait]
impl ConnectionRate for LocalRate {
    async fn allow(&self, ip: IpAddr) -> bool {
        self.allow_now(ip)
    }
}

/// The rate across the instances of a cluster.
pub struct RedisRate {
    redis: Arc<RedisConn>,
    per_minute: u32,
    local: LocalRate,
}

impl RedisRate {
    /// `per_minute` new connections per IP across the cluster (`0`: unlimited).
    pub fn new(redis: Arc<RedisConn>, per_minute: u32) -> RedisRate {
        RedisRate {
            redis,
            per_minute,
            local: LocalRate::new(per_minute),
        }
    }
}

#[async_trait]
impl ConnectionRate for RedisRate {
    async fn allow(&self, ip: IpAddr) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let minute = now_ms() / 60_000;
        let key = self
            .redis
            .spread_key(&["ip", &ip.to_string(), &minute.to_string()]);
        let count: Option<i64> = self
            .redis
            .call(async |c| {
                redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(120_000)
                    .ignore()
                    .query_async::<(i64,)>(c)
                    .await
                    .map(|(n,)| n)
            })
            .await;
        // Unanswered: the local limiter decides alone.
        let cluster = count.is_none_or(|n| n <= i64::from(self.per_minute));
        cluster && self.local.allow_now(ip)
    }
}
