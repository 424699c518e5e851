//! The `nself-realtime` binary: parse the command line, set up logging, load the
//! configuration, dispatch. All logic lives in the library.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use nself_realtime::cli::{Cli, Command, run_command};
use nself_realtime::config::{Config, LogFormat, LogRotation};
use tokio_util::sync::CancellationToken;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Logs to stderr, or to `REALTIME_LOG_FILE` (rotated by `REALTIME_LOG_ROTATION`, keeping
/// `REALTIME_LOG_MAX_FILES`). The returned guard flushes the file writer when dropped.
fn init_tracing(config: &Config) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{lvl},sqlx=warn,socketioxide=warn,engineioxide=warn",
            lvl = config.log_level
        ))
    });
    let (writer, guard) = match &config.log_file {
        None => (BoxMakeWriter::new(std::io::stderr), None),
        Some(path) => {
            let (file, guard) = tracing_appender::non_blocking(log_appender(config, path)?);
            (BoxMakeWriter::new(file), Some(guard))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a terminal: never in REALTIME_LOG_FILE, nor in a file or pipe
        // that stderr was redirected to (the plugin's server.log, the journal), nor with NO_COLOR.
        .with_ansi(
            config.log_file.is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(writer);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
    Ok(guard)
}

/// The file appender of `REALTIME_LOG_FILE`: with rotation the files are `<name>.<date>`.
fn log_appender(config: &Config, path: &Path) -> anyhow::Result<RollingFileAppender> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("REALTIME_LOG_FILE {path:?} names no file"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("REALTIME_LOG_FILE: cannot create {dir:?}: {e}"))?;
    let rotation = match config.log_rotation {
        LogRotation::Never => Rotation::NEVER,
        LogRotation::Hourly => Rotation::HOURLY,
        LogRotation::Daily => Rotation::DAILY,
    };
    let mut builder = RollingFileAppender::builder()
        .rotation(rotation)
        .filename_prefix(name.to_string_lossy());
    if config.log_rotation != LogRotation::Never {
        builder = builder.max_log_files(config.log_max_files);
    }
    builder
        .build(dir)
        .map_err(|e| anyhow::anyhow!("REALTIME_LOG_FILE {path:?}: {e}"))
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Connections the kernel queues before the server accepts them: a reconnecting herd arrives
/// all at once (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Each connection is a file descriptor: lift the soft limit to the hard one.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let addr = SocketAddr::new(config.host, config.port);
    let listener = listen(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        signal().await;
        trigger.cancel();
    });
    nself_realtime::server::run(config, listener, shutdown).await
}

/// A command-line error as the README promises: one line on stderr, exit 1 (help and version
/// still print in full and exit 0).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut what = Vec::new();
    let mut usage = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
        } else if usage.is_none() && !line.starts_with("For more information") {
            what.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
        }
    }
    match usage {
        Some(u) => eprintln!("Error: {} (usage: {u}; --help for more)", what.join(" ")),
        None => eprintln!("Error: {}", what.join(" ")),
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // Held until main returns: dropping it flushes the log file.
    let _log_guard = if matches!(command, Command::Serve) {
        match init_tracing(&config) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("Error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Serve => serve(config).await,
            other => run_command(&config, other).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
