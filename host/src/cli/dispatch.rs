//! Which subcommand runs, with which resources (everything but `serve`, which main runs).

use super::{Command, RoomsCommand};
use crate::config::Config;
use crate::store::Store;

/// Runs a management subcommand.
pub async fn run_command(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Plugins { json } => return super::plugins::run(config, json).await,
        Command::Plugin { action } => return super::plugin::run(action),
        Command::Token {
            user,
            roles,
            session,
            ttl,
            json,
        } => return super::token::mint(config, &user, &roles, session.as_deref(), &ttl, json),
        Command::CheckToken { token, json } => return super::token::check(config, &token, json),
        Command::Healthcheck {
            ready,
            timeout_ms,
            json,
        } => return super::status::healthcheck(config, ready, timeout_ms, json).await,
        Command::Status { pid_file, json } => {
            return super::status::run(config, pid_file.as_deref(), json).await;
        }
        Command::Uninstall { yes, json } => return super::uninstall::run(config, yes, json).await,
        Command::Nodes { json } => return super::live::nodes(config, json).await,
        Command::Disconnect { user, socket, json } => {
            return super::live::disconnect(config, user, socket, json).await;
        }
        _ => {}
    }
    // Read-only commands open what exists: they neither create a database nor migrate one.
    let read_only = matches!(
        command,
        Command::Stats { .. }
            | Command::Connections { .. }
            | Command::Events { .. }
            | Command::Rooms {
                action: None | Some(RoomsCommand::List { .. } | RoomsCommand::Info { .. }),
                ..
            }
    );
    let store = if read_only {
        Store::open_existing(&config.database_url).await?
    } else {
        Store::connect(&config.database_url).await?
    };
    match command {
        // `serve` is dispatched by main, the commands that need no store above.
        Command::Serve
        | Command::Plugins { .. }
        | Command::Plugin { .. }
        | Command::Token { .. }
        | Command::CheckToken { .. }
        | Command::Healthcheck { .. }
        | Command::Status { .. }
        | Command::Nodes { .. }
        | Command::Disconnect { .. }
        | Command::Uninstall { .. } => Ok(()),
        Command::Init { json } => super::figures::init(config, &store, json).await,
        Command::Stats { json } => super::figures::stats(&store, json).await,
        Command::Rooms { action, json } => super::rooms::run(config, &store, action, json).await,
        Command::CreateRoom(args) => super::rooms::create(&store, args).await,
        Command::AddMember(args) => super::rooms::add_member(&store, args).await,
        Command::RemoveMember(args) => super::rooms::remove_member(&store, args).await,
        Command::Connections { json } => super::figures::connections(&store, json).await,
        Command::Events { number, json } => super::figures::events(&store, number, json).await,
    }
}
