# scripts/lib.sh: shared by scripts/demo and scripts/test (source it).
# Installs what a fresh Debian 12 lacks and builds with CMake.

DCM_PACKAGES="build-essential cmake pkg-config libuv1-dev libwslay-dev libhttp-parser-dev
libcurl4-openssl-dev liblua5.4-dev lua5.4 lua-cjson-dev lua-busted python3
python3-websockets curl procps valgrind"

# Installs the missing packages only; apt-get update runs only when needed.
dcm_install_deps() {
  local missing=() p
  for p in $DCM_PACKAGES "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages and not root: apt-get install ${missing[*]}" >&2
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# dcm_build DIR [cmake args...]: configure once, then build.
dcm_build() {
  local dir=$1
  shift
  cmake -S "$DCM_ROOT" -B "$DCM_ROOT/$dir" "$@" >/dev/null &&
    cmake --build "$DCM_ROOT/$dir" -j"$(nproc)"
}

DCM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
