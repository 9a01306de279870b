//! Gossip tests: the sans-IO core over an in-memory network ([`sim`]) with paused tokio time,
//! and one run of the real driver over 127.0.0.1 ([`udp`]).

mod crypto;
mod membership;
mod records;
mod sim;
mod udp;
