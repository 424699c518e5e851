#!/usr/bin/env bash
# nself plugin realtime rooms ...
#   rooms list
#   rooms create <name> [type] [visibility]     type: channel|dm|group|broadcast, visibility: public|private|secret
#   rooms delete <name>                         soft delete (create brings it back)
#   rooms info <name>                           the room and its members
#   rooms add-member <room> <user> [role]       role: admin|moderator|member|guest
#   rooms remove-member <room> <user>
# Any of them takes --json. Every value goes to the binary as one argument after `--`: the
# binary validates it and binds it as a query parameter (nothing here builds SQL).
# shellcheck source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

action="${1:-list}"
[ $# -gt 0 ] && shift
json=()
args=()
for arg in "$@"; do
  if [ "$arg" = "--json" ]; then json=(--json); else args+=("$arg"); fi
done

need() {
  local min="$1" max="$2"
  if [ "${#args[@]}" -lt "$min" ] || [ "${#args[@]}" -gt "$max" ]; then usage; fi
}

case "$action" in
  list)
    need 0 0
    realtime_run rooms list ${json[@]+"${json[@]}"}
    ;;
  create)
    need 1 3
    realtime_run rooms create --type "${args[1]:-channel}" --visibility "${args[2]:-public}" \
      ${json[@]+"${json[@]}"} -- "${args[0]}"
    ;;
  delete)
    need 1 1
    realtime_run rooms delete ${json[@]+"${json[@]}"} -- "${args[0]}"
    ;;
  info)
    need 1 1
    realtime_run rooms info ${json[@]+"${json[@]}"} -- "${args[0]}"
    ;;
  add-member)
    need 2 3
    realtime_run rooms add-member --role "${args[2]:-member}" ${json[@]+"${json[@]}"} \
      -- "${args[0]}" "${args[1]}"
    ;;
  remove-member)
    need 2 2
    realtime_run rooms remove-member ${json[@]+"${json[@]}"} -- "${args[0]}" "${args[1]}"
    ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
