//! Background work of a running server, each task stopped by the server's background token.
//!
//! | file | owns |
//! |---|---|
//! | `janitor.rs` | typing expiry, custom status expiry and idle users (announced), presence heartbeats, the background figures of `/metrics`, audit retention |
//! | `leases.rs` | this instance's lease (database and Redis), crash cleanup of instances whose lease expired (announced), re-writing this instance's rows when they were reaped |
//! | `recovery.rs` | Redis coming back (or up for the first time): this instance's sockets re-asserted, the presence changes it caused announced |

mod janitor;
mod leases;
mod recovery;

pub use janitor::janitor;
pub use leases::leases;
pub use recovery::recovery;
