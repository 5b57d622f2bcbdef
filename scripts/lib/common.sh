# Shared by scripts/demo and scripts/test: install what FedLM needs on Debian when it is missing.

# ensure_apt_packages PKG...: installs the packages that dpkg does not report as installed.
ensure_apt_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The C libraries every build links (module maps in Sources/C*).
FEDLM_BUILD_PACKAGES=(libzmq3-dev libopenblas-dev libsqlite3-dev pkg-config)

# ensure_python_venv DIR PACKAGE...: a virtualenv at DIR with the given pip packages.
ensure_python_venv() {
  local dir=$1; shift
  if ! python3 -c "import ensurepip" >/dev/null 2>&1; then ensure_apt_packages python3-venv; fi
  local stamp="$dir/.fedlm-requirements"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$*" ]; then return 0; fi
  echo "==> preparing Python environment $dir: $*"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$*" > "$stamp"
}
