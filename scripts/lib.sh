# scripts/lib.sh: steps shared by the project's scripts (demo, test).
# Source it from bash:  . "$(dirname "$0")/lib.sh"
#   dcm_install_deps [PKG...]  apt-get install whatever Debian 12 packages are
#                              missing (the project's list plus PKG...)
#   dcm_build DIR [ARGS...]    configure DIR (cmake ARGS) if needed, then build
#   DCM_ROOT                   the repository root

DCM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)

DCM_PACKAGES="build-essential cmake pkg-config libuv1-dev libwslay-dev libhttp-parser-dev
libcurl4-openssl-dev libssl-dev openssl liblua5.4-dev lua5.4 lua-cjson-dev lua-busted
python3 python3-websockets curl procps etcd-server"

dcm__installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# Installs the missing packages only; does nothing (and needs no network)
# when everything is there. apt-get update runs only when something is missing.
dcm_install_deps() {
  local missing=() p sudo=()
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "dcm: not a Debian system; install these yourself:" $DCM_PACKAGES "$@" >&2
    return 0
  fi
  for p in $DCM_PACKAGES "$@"; do
    dcm__installed "$p" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "dcm: missing packages and not root: apt-get install ${missing[*]}" >&2
      return 1
    fi
  fi
  echo "dcm: installing missing packages: ${missing[*]}" >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# dcm_build DIR [CMAKE_ARGS...]: configures DIR (relative to DCM_ROOT, or
# absolute) when it has no cache yet or when arguments are given, then builds
# (incremental: quick when up to date).
dcm_build() {
  local dir=$1
  shift
  case "$dir" in /*) ;; *) dir="$DCM_ROOT/$dir" ;; esac
  if [ ! -f "$dir/CMakeCache.txt" ] || [ $# -gt 0 ]; then
    cmake -S "$DCM_ROOT" -B "$dir" "$@" >/dev/null || return
  fi
  cmake --build "$dir" -j "$(nproc 2>/dev/null || echo 2)"
}
