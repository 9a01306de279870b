//! Timing and size knobs of the gossip plane ([`GossipConfig`]), and how they map onto foca's
//! [`foca::Config`].
//!
//! The defaults are sized so that a dead node's endpoints leave every load balancer within
//! about 3 s (and the node is `down` everywhere well within 5 s): the first probe of the dead
//! node comes within one or two probe periods (500 ms), the suspicion is raised one period
//! later, it turns into death after `suspect_to_down_ms` (1 s), and the death spreads with the
//! periodic gossip (200 ms). Checked by
//! `gossip::tests::membership::killed_node_is_down_everywhere_within_bound` on 5 nodes over
//! 24 seeded runs (1.6 s to 3.0 s), and measured by `cargo bench -p mesh-tests --bench services`.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::crypto::SEAL_OVERHEAD;
use super::error::GossipError;
use super::identity::MAX_NODE_ID_LEN;

/// The default gossip port (udp for SWIM and record pushes, tcp for anti-entropy).
pub const DEFAULT_PORT: u16 = 7946;

/// Bytes of a datagram spent on our envelope around a foca packet: the sealing header and tag,
/// the sender's node id (bounded) and a few bytes of framing.
const ENVELOPE_OVERHEAD: usize = SEAL_OVERHEAD + MAX_NODE_ID_LEN + 16;

/// Gossip timing and sizes. Every duration is in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipConfig {
    /// How often each node probes one random member (SWIM protocol period).
    pub probe_period_ms: u64,
    /// How long a direct probe waits for its ack before asking others to probe indirectly.
    /// Must be less than `probe_period_ms`.
    pub probe_rtt_ms: u64,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute the suspicion before it is declared down.
    pub suspect_to_down_ms: u64,
    /// How often membership updates are gossiped besides the probe traffic.
    pub gossip_interval_ms: u64,
    /// To how many members each periodic gossip goes.
    pub gossip_fanout: usize,
    /// How many times each membership update is piggybacked before it is dropped.
    pub max_transmissions: u8,
    /// How often a node asks a random member for members it may not know (foca announce).
    pub announce_interval_ms: u64,
    /// How often a node announces itself to listed peers it does not see alive, and to members
    /// it holds down (so partitions heal and restarts are picked up).
    pub rejoin_interval_ms: u64,
    /// How long foca remembers a down identity before forgetting it.
    pub remove_down_after_ms: u64,
    /// How often a node runs a full-state sync over tcp with a random live peer sharing a scope.
    pub anti_entropy_interval_ms: u64,
    /// How long a deleted record is kept as a tombstone (so an older copy cannot come back).
    /// Keep it several anti-entropy intervals long.
    pub tombstone_ttl_ms: u64,
    /// Deadline for one anti-entropy exchange (connect, write, read).
    pub sync_timeout_ms: u64,
    /// Largest datagram sent or accepted, sealing included. Stay under the path MTU.
    pub max_packet_size: usize,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            probe_period_ms: 500,
            probe_rtt_ms: 200,
            indirect_probes: 3,
            suspect_to_down_ms: 1000,
            gossip_interval_ms: 200,
            gossip_fanout: 3,
            max_transmissions: 10,
            announce_interval_ms: 30_000,
            rejoin_interval_ms: 2000,
            remove_down_after_ms: 24 * 3600 * 1000,
            anti_entropy_interval_ms: 10_000,
            tombstone_ttl_ms: 120_000,
            sync_timeout_ms: 5000,
            max_packet_size: 1400,
        }
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl GossipConfig {
    /// Checks every knob; [`super::Core::new`] calls it.
    pub fn validate(&self) -> Result<(), GossipError> {
        let bad = |field, reason| Err(GossipError::Config { field, reason });
        if self.probe_period_ms == 0 {
            return bad("probe_period_ms", "must be > 0");
        }
        if self.probe_rtt_ms == 0 || self.probe_rtt_ms >= self.probe_period_ms {
            return bad("probe_rtt_ms", "must be > 0 and < probe_period_ms");
        }
        if self.indirect_probes == 0 {
            return bad("indirect_probes", "must be > 0");
        }
        if self.suspect_to_down_ms == 0 {
            return bad("suspect_to_down_ms", "must be > 0");
        }
        if self.gossip_interval_ms == 0 || self.gossip_fanout == 0 {
            return bad("gossip_interval_ms", "and gossip_fanout must be > 0");
        }
        if self.max_transmissions == 0 {
            return bad("max_transmissions", "must be > 0");
        }
        if self.announce_interval_ms == 0 || self.rejoin_interval_ms == 0 {
            return bad("announce_interval_ms", "and rejoin_interval_ms must be > 0");
        }
        if self.remove_down_after_ms == 0 {
            return bad("remove_down_after_ms", "must be > 0");
        }
        if self.anti_entropy_interval_ms == 0 || self.sync_timeout_ms == 0 {
            return bad(
                "anti_entropy_interval_ms",
                "and sync_timeout_ms must be > 0",
            );
        }
        if self.tombstone_ttl_ms == 0 {
            return bad("tombstone_ttl_ms", "must be > 0");
        }
        if self.max_packet_size < 512 + ENVELOPE_OVERHEAD || self.max_packet_size > 65_000 {
            return bad("max_packet_size", "must be between 700 and 65000");
        }
        Ok(())
    }

    pub(crate) fn suspect_to_down(&self) -> Duration {
        ms(self.suspect_to_down_ms)
    }
    pub(crate) fn rejoin_interval(&self) -> Duration {
        ms(self.rejoin_interval_ms)
    }
    pub(crate) fn anti_entropy_interval(&self) -> Duration {
        ms(self.anti_entropy_interval_ms)
    }
    pub(crate) fn tombstone_ttl(&self) -> Duration {
        ms(self.tombstone_ttl_ms)
    }
    /// How often tombstones are swept: a quarter of their lifetime, at least once a second.
    pub(crate) fn gc_interval(&self) -> Duration {
        ms((self.tombstone_ttl_ms / 4).max(1000))
    }
    /// Deadline for one anti-entropy exchange.
    pub fn sync_timeout(&self) -> Duration {
        ms(self.sync_timeout_ms)
    }

    /// The largest foca packet: the datagram budget less our envelope. The same on every node
    /// (it does not depend on this node's id length), because foca also refuses bigger input.
    pub(crate) fn foca_packet_size(&self) -> usize {
        self.max_packet_size - ENVELOPE_OVERHEAD
    }

    /// The largest encoded record batch one push datagram may carry.
    pub(crate) fn push_budget(&self) -> usize {
        self.max_packet_size - ENVELOPE_OVERHEAD
    }

    pub(crate) fn foca_config(&self) -> foca::Config {
        let nz = |n: usize| NonZeroUsize::new(n.max(1)).unwrap_or(NonZeroUsize::MIN);
        let periodic = |frequency_ms: u64, n: usize| {
            Some(foca::PeriodicParams {
                frequency: ms(frequency_ms),
                num_members: nz(n),
            })
        };
        foca::Config {
            probe_period: ms(self.probe_period_ms),
            probe_rtt: ms(self.probe_rtt_ms),
            num_indirect_probes: nz(self.indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: ms(self.suspect_to_down_ms),
            remove_down_after: Some(ms(self.remove_down_after_ms)),
            max_packet_size: nz(self.foca_packet_size()),
            // A node we declare down learns it at once and rejoins under a renewed identity.
            notify_down_members: true,
            periodic_announce: periodic(self.announce_interval_ms, 1),
            periodic_announce_to_down_members: periodic(self.rejoin_interval_ms, 2),
            periodic_gossip: periodic(self.gossip_interval_ms, self.gossip_fanout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_config_defaults_validate_and_parse_partially() {
        GossipConfig::default().validate().unwrap();
        let c: GossipConfig =
            serde_json::from_str(r#"{"probe_period_ms": 500, "probe_rtt_ms": 200}"#).unwrap();
        assert_eq!(c.probe_period_ms, 500);
        assert_eq!(
            c.suspect_to_down_ms,
            GossipConfig::default().suspect_to_down_ms
        );
        assert!(serde_json::from_str::<GossipConfig>(r#"{"probe_period": 1}"#).is_err());
        let bad = GossipConfig {
            probe_rtt_ms: 1000,
            ..GossipConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
