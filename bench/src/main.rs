//! `realtime-bench`: the load generator's command line.

use clap::{Parser, Subcommand};
use nself_realtime_bench::churn::{self, ChurnOpts};
use nself_realtime_bench::connections::{self, ConnOpts};
use nself_realtime_bench::load::{self, Kind, LoadOpts};
use nself_realtime_bench::storm::{self, StormOpts};

#[derive(Parser)]
#[command(name = "realtime-bench", version, about)]
struct Cli {
    /// Print the report as one JSON document on stdout (progress stays on stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Worker threads of the generator's runtime (1 keeps it on one core).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N idle authenticated clients; server RSS per connection, connect rate, pings.
    Connections(ConnOpts),
    /// Rooms of R members, S senders at a fixed rate of `message:send` with ack: delivered/s,
    /// completeness, end-to-end latency, ack RTT, server CPU and RSS (`--find-max` to search).
    Fanout(LoadOpts),
    /// A storm of `typing:start` / `typing:stop` (ack RTT, `typing:event` received).
    Typing(LoadOpts),
    /// A storm of `presence:update` (ack RTT, `presence:changed` received).
    Presence(LoadOpts),
    /// Join churn: `room:leave` / `room:join` (ack RTT, `user:joined`/`user:left` received).
    Join(LoadOpts),
    /// Join storm: N clients connect at once, each joining a room right after its connect
    /// answer (time until all joined, connect and join-ack latency, failures by code).
    Storm(StormOpts),
    /// Reconnect herd: a storm, then (once `--ready-file` exists the driver kills and restarts
    /// the server) every client reconnects with the JS client's backoff and rejoins (time
    /// until all are back, failures).
    Herd(StormOpts),
    /// Steady turnover for soak runs: virtual users connect, join, send, leave and disconnect
    /// in a loop until the duration ends.
    Churn(ChurnOpts),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        match cli.command {
            Command::Connections(o) => connections::main(o, cli.json).await,
            Command::Fanout(o) => load::main(Kind::Fanout, o, cli.json).await,
            Command::Typing(o) => load::main(Kind::Typing, o, cli.json).await,
            Command::Presence(o) => load::main(Kind::Presence, o, cli.json).await,
            Command::Join(o) => load::main(Kind::Join, o, cli.json).await,
            Command::Storm(o) => storm::storm(o, cli.json).await,
            Command::Herd(o) => storm::herd(o, cli.json).await,
            Command::Churn(o) => churn::main(o, cli.json).await,
        }
    })
}
