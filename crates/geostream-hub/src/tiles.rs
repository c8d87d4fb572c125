//! Tile subscriptions as the hub sees them: an id in the session's subscription table and a
//! count in the statistics. Which tiles a subscription holds, at which versions, and what to
//! push when a tile changes is the server's tile service's business (it needs the store and
//! the tile cache, which the hub does not know).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::session::{Session, SubTarget};
use crate::{Hub, HubError, Removed};

impl Hub {
    /// Registers a tile subscription of `layer` for `session` and returns its id, counted
    /// against the session's subscription limit like any other.
    pub fn add_tile_sub(&self, session: &Arc<Session>, layer: &str) -> Result<u32, HubError> {
        let sub = session.add_sub(
            SubTarget::Tiles {
                layer: layer.into(),
            },
            self.limits.max_subscriptions,
        )?;
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(sub)
    }

    pub(crate) fn unregister_tile_sub(&self, sub: u32, target: SubTarget) -> Removed {
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        Removed {
            sub,
            target,
            last_on_node: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use geostream_core::codec::Encoding;

    use super::*;
    use crate::HubLimits;

    #[test]
    fn tile_subs_share_the_id_space_and_the_limit() {
        let hub = Hub::new(HubLimits {
            max_subscriptions: 2,
            ..HubLimits::default()
        });
        let s = hub.new_session(Encoding::Json, None);
        let a = hub.add_tile_sub(&s, "roads").unwrap();
        let c = hub.add_channel_sub(&s, "chat", false).unwrap();
        assert_ne!(a, c.sub);
        assert_eq!(
            hub.add_tile_sub(&s, "roads"),
            Err(HubError::TooManySubscriptions(2))
        );
        assert_eq!(
            s.sub_target(a),
            Some(SubTarget::Tiles {
                layer: "roads".into()
            })
        );
        let r = hub.remove_sub(&s, a).unwrap();
        assert!(matches!(r.target, SubTarget::Tiles { .. }));
        assert_eq!(hub.stats().subscriptions.load(Ordering::Relaxed), 1);
        assert_eq!(hub.remove_session(&s).len(), 1);
        assert_eq!(hub.stats().subscriptions.load(Ordering::Relaxed), 0);
    }
}
