#!/usr/bin/env bash
# Installs the realtime plugin: checks the toolchain, builds the release binary (or takes the
# one NSELF_REALTIME_BIN names), copies it to $REALTIME_DATA_DIR/bin, writes a commented .env
# there if there is none, applies the migrations and creates the default rooms (init).
# Re-running it is safe: every step leaves what is already in place as it is, apart from
# replacing the installed binary with the new build.
#
#   bash install.sh              build with cargo (release profile; several minutes the first time)
#   NSELF_REALTIME_BIN=/path/to/nself-realtime bash install.sh    use an existing binary
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

REPO_ROOT="$(cd "$PLUGIN_DIR/../.." && pwd)"
MIN_RUST="1.94"

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

build_binary() {
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed: install Rust $MIN_RUST or newer (https://rustup.rs), or set NSELF_REALTIME_BIN"
  local rustc_version
  rustc_version="$(rustc --version | awk '{print $2}')"
  version_ge "$rustc_version" "$MIN_RUST" || die "rustc $rustc_version is too old: $MIN_RUST or newer is needed"
  [ -f "$REPO_ROOT/Cargo.toml" ] || die "no Cargo.toml at $REPO_ROOT: run install.sh from the nself-realtime source tree"
  log_info "Building nself-realtime (release) with rustc $rustc_version..." >&2
  (cd "$REPO_ROOT" && cargo build --release --locked -p nself-realtime >&2) || die "cargo build failed"
  local target_dir
  target_dir="${CARGO_TARGET_DIR:-}"
  if [ -z "$target_dir" ]; then
    target_dir="$(cd "$REPO_ROOT" && cargo metadata --format-version 1 --no-deps |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  fi
  case "$target_dir" in /*) ;; *) target_dir="$REPO_ROOT/${target_dir:-target}" ;; esac
  printf '%s\n' "$target_dir/release/nself-realtime"
}

log_info "Installing the nself realtime plugin"
ensure_dirs

if [ -n "${NSELF_REALTIME_BIN:-}" ]; then
  [ -x "$NSELF_REALTIME_BIN" ] || die "NSELF_REALTIME_BIN=$NSELF_REALTIME_BIN is not an executable file"
  source_bin="$NSELF_REALTIME_BIN"
  log_ok "Using the binary $source_bin (NSELF_REALTIME_BIN)"
else
  source_bin="$(build_binary)"
  [ -x "$source_bin" ] || die "the build left no binary at $source_bin"
  mkdir -p "$(dirname "$INSTALLED_BIN")"
  install -m 0755 "$source_bin" "$INSTALLED_BIN.new"
  mv -f "$INSTALLED_BIN.new" "$INSTALLED_BIN"
  log_ok "Installed $INSTALLED_BIN"
fi
"$(realtime_bin)" --version >/dev/null || die "the binary does not run"

env_file="$REALTIME_DATA_DIR/.env"
if [ -f "$env_file" ]; then
  log_ok "Keeping the existing configuration $env_file"
elif [ -f "$REPO_ROOT/.env.example" ]; then
  (umask 077 && cp "$REPO_ROOT/.env.example" "$env_file")
  log_ok "Wrote $env_file (every variable, commented out at its default)"
fi

log_info "Applying migrations and creating the default rooms..."
realtime_run init >/dev/null || die "init failed (check DATABASE_URL / POSTGRES_* in $env_file)"
log_ok "Database ready"

log_info ""
log_ok "Realtime plugin installed"
log_info "  Start:   nself plugin realtime server start"
log_info "  Status:  nself plugin realtime status"
log_info "  Config:  $env_file"
log_info "  Logs:    $REALTIME_SERVER_LOG"
