# Sourced by the benchmark scripts: where the vendored real data is (datasets/ in the
# repository; see datasets/README.md).
DATA="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/datasets"
# data_file REL: the path of datasets/REL; fails, saying which, when it is missing.
data_file() {
  if [ ! -f "$DATA/$1" ]; then
    echo "error: $DATA/$1 is missing (the vendored data of the repository)" >&2
    return 1
  fi
  printf '%s\n' "$DATA/$1"
}
