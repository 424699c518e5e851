//! Load generator for nself-realtime (and any Socket.IO v4 server speaking the same events,
//! such as the Node.js reference): idle connections, room fan-out, typing/presence storms, join
//! churn, join storms and reconnect herds. It speaks Engine.IO v4 / Socket.IO v5 over a hand-rolled websocket client (one
//! task per connection, frames parsed in place, no JSON parsing on the hot path) so that it
//! stays lean while it shares the machine with the server it measures.

pub mod churn;
pub mod common;
pub mod connections;
pub mod hist;
pub mod load;
pub mod storm;
pub mod sys;
pub mod ws;
