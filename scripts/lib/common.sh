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
FEDLM_BUILD_PACKAGES=(libzmq3-dev libopenblas-dev libsqlite3-dev libssl-dev zlib1g-dev pkg-config)

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

# ensure_client_venv DIR: a virtualenv at DIR with the PyTorch trainer (clients/python) installed
# editable with its dependencies; PyTorch's CPU build when the index offers it (FEDLM_TORCH picks
# another requirement, e.g. "torch" for the CUDA build).
ensure_client_venv() {
  local dir=$1 torch=${FEDLM_TORCH:-torch==2.13.0+cpu}
  local stamp="$dir/.fedlm-requirements" want="$torch clients/python $(cat clients/python/pyproject.toml | cksum)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  if ! python3 -c "import ensurepip" >/dev/null 2>&1; then ensure_apt_packages python3-venv; fi
  echo "==> preparing the PyTorch trainer's environment $dir ($torch)"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$torch" 2>/dev/null \
    || "$dir/bin/pip" install --quiet --disable-pip-version-check torch
  "$dir/bin/pip" install --quiet --disable-pip-version-check -e clients/python
  echo "$want" > "$stamp"
}

# The demo corpus: five clusters of real text from Debian packages (fortune cookies in English,
# German, Spanish and Italian; Python's standard library as code). Prints CLUSTER=FILE,FILE...
# arguments for `fedlm data prepare`.
DEMO_CORPUS_PACKAGES=(fortunes fortunes-de fortunes-es fortunes-it libpython3-stdlib)
demo_corpus_clusters() {
  local f=/usr/share/games/fortunes
  local py
  py=$(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | sort -V | tail -n 1)
  [ -n "$py" ] || { echo "no /usr/lib/python3.X found" >&2; return 1; }
  join() { paste -sd, -; }
  # English: the files of Debian's `fortunes` and `fortunes-min`, named, since other fortune
  # packages (Italian, Portuguese, Chinese, ...) put files in the same folder.
  local english=(art ascii-art computers cookie debian definitions disclaimer drugs education ethnic food fortunes
    goedel humorists kids knghtbrd law linux linuxcookie literature love magic medicine men-women miscellaneous news
    paradoxum people perl pets platitudes politics pratchett riddles science songs-poems sports startrek tao
    translate-me wisdom work zippy)
  echo "en=$(for name in "${english[@]}"; do [ -f "$f/$name" ] && echo "$f/$name"; done | join)"
  for lang in de es it; do echo "$lang=$(find "$f/$lang" -type f ! -name '*.dat' | sort | join)"; done
  echo "code=$(find "$py" -maxdepth 1 -type f -name '*.py' | sort | join)"
}

# The confirmation corpus, built the same way from other Debian packages and never tuned on:
# fortunes in Polish, Czech, Russian and Brazilian Portuguese; Perl's standard modules as code.
CONFIRM_CORPUS_PACKAGES=(fortunes-pl fortunes-cs fortunes-ru fortunes-br perl-modules-5.36)
confirm_corpus_clusters() {
  local f=/usr/share/games/fortunes
  local perl
  perl=$(ls -d /usr/share/perl/5.[0-9]* 2>/dev/null | sort -V | tail -n 1)
  [ -n "$perl" ] || { echo "no /usr/share/perl/5.X found" >&2; return 1; }
  join() { paste -sd, -; }
  for lang in pl cs ru; do echo "$lang=$(find "$f/$lang" -type f ! -name '*.dat' ! -name '*.u8' | sort | join)"; done
  echo "pt=$f/brasil"
  echo "perl=$(find -L "$perl" -maxdepth 2 -type f -name '*.pm' | sort | join)"
}

# prepare_corpus DIR CLUSTERS_FUNCTION: tokenizer (vocabulary 4096) and token shards in DIR of
# the clusters the function prints.
prepare_corpus() {
  local dir=$1 clusters_of=$2
  mapfile -t clusters < <("$clusters_of")
  # Reused while it was prepared from the same files; prepared again when the list changed.
  if [ -f "$dir/shards/manifest.json" ] && [ "$(cat "$dir/clusters.txt" 2>/dev/null)" = "$(printf '%s\n' "${clusters[@]}")" ]; then
    return 0
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  local files=()
  for c in "${clusters[@]}"; do IFS=, read -ra list <<< "${c#*=}"; files+=("${list[@]}"); done
  echo "==> training the tokenizer on ${#files[@]} files"
  .build/release/fedlm tokenizer train --vocab 4096 --out "$dir/tokenizer.json" "${files[@]}"
  echo "==> preparing token shards"
  .build/release/fedlm data prepare --tokenizer "$dir/tokenizer.json" --out "$dir/shards" "${clusters[@]}"
  printf '%s\n' "${clusters[@]}" > "$dir/clusters.txt"
}

# prepare_demo_data DIR: the demo corpus's tokenizer and shards in DIR.
prepare_demo_data() { prepare_corpus "$1" demo_corpus_clusters; }

# prepare_confirm_data DIR: the confirmation corpus's tokenizer and shards in DIR.
prepare_confirm_data() { prepare_corpus "$1" confirm_corpus_clusters; }

# prepare_confirm_data_if_named ARGS...: the confirmation corpus in runs/confirm-data when an
# argument names one of its topologies (their names say "confirm").
prepare_confirm_data_if_named() {
  [[ " $* " == *confirm* ]] || return 0
  ensure_apt_packages "${CONFIRM_CORPUS_PACKAGES[@]}"
  prepare_confirm_data runs/confirm-data
}
