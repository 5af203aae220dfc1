#!/usr/bin/env bash
# Run the cargo-fuzz targets (fuzz/fuzz_targets/) for a bounded time each.
#
#   scripts/fuzz.sh [--cmin] [SECONDS] [TARGET...]
#
#   SECONDS   time per target (default 120)
#   TARGET    traceql, trace_id, deepflow_body (default: all)
#   --cmin    minimise each target's corpus afterwards (cargo fuzz cmin, edge coverage)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); CI runs stable only,
# so fuzzing happens by hand. Each target's corpus is fuzz/corpus/<target>/ (committed, kept
# small with --cmin; the suite replays it, tests/fuzz_corpus.rs); new inputs are added there.
# A crash leaves its input in fuzz/artifacts/<target>/ (not committed): fix the cause, then
# keep the input in fuzz/regressions/<target>/ so the suite replays it too.
# Environment: FUZZ_TARGET_DIR (default fuzz/target) is cargo's target directory;
# FUZZ_BUILD_FLAGS adds cargo-fuzz build flags (e.g. "--codegen-units 8" for faster builds);
# FUZZ_FLAGS adds libFuzzer flags (e.g. "-jobs=2 -workers=2").
set -euo pipefail

CMIN=0
SECONDS_PER_TARGET=120
TARGETS=()
for arg in "$@"; do
  case "$arg" in
    --cmin) CMIN=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    ''|*[!0-9]*) TARGETS+=("$arg") ;;
    *) SECONDS_PER_TARGET="$arg" ;;
  esac
done

cd "$(dirname "$0")/.."
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(traceql trace_id deepflow_body)
TARGET_DIR="${FUZZ_TARGET_DIR:-fuzz/target}"

die() { printf 'fuzz.sh: %s\n' "$*" >&2; exit 1; }
cargo +nightly --version >/dev/null 2>&1 || die "no nightly toolchain (rustup toolchain install nightly)"
cargo +nightly fuzz --version >/dev/null 2>&1 || die "no cargo-fuzz (cargo install cargo-fuzz)"

FAILED=()
for t in "${TARGETS[@]}"; do
  [ -f "fuzz/fuzz_targets/$t.rs" ] || die "unknown target $t (see fuzz/fuzz_targets/)"
  mkdir -p "fuzz/corpus/$t"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=fuzz/dict/$t.dict")
  printf '\n==> %s for %ss\n' "$t" "$SECONDS_PER_TARGET"
  log=$(mktemp)
  set +o pipefail
  # shellcheck disable=SC2086 # FUZZ_BUILD_FLAGS and FUZZ_FLAGS are lists of flags
  cargo +nightly fuzz run --target-dir "$TARGET_DIR" ${FUZZ_BUILD_FLAGS:-} "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 "${dict[@]}" ${FUZZ_FLAGS:-} \
      2>&1 | tee "$log" | grep -E '^#[0-9]+[[:space:]]+pulse'
  status=${PIPESTATUS[0]}
  set -o pipefail
  if [ "$status" = 0 ] && grep -q '^Done' "$log"; then
    grep '^Done' "$log"
  else
    tail -n 40 "$log"
    FAILED+=("$t")
  fi
  rm -f "$log"
  if [ "$CMIN" = 1 ]; then
    printf '==> minimising fuzz/corpus/%s (%s files)\n' "$t" "$(ls "fuzz/corpus/$t" | wc -l)"
    # shellcheck disable=SC2086
    # Edges only (no hit counts) and a set cover: the smallest corpus with the same coverage.
    cargo +nightly fuzz cmin --target-dir "$TARGET_DIR" ${FUZZ_BUILD_FLAGS:-} "$t" "fuzz/corpus/$t" -- \
      -max_len=4096 -use_counters=0 -set_cover_merge=1 >/dev/null 2>&1 || die "cmin of $t failed"
    printf '    %s files left\n' "$(ls "fuzz/corpus/$t" | wc -l)"
  fi
done

[ "${#FAILED[@]}" -eq 0 ] || die "crashes in: ${FAILED[*]} (inputs in fuzz/artifacts/)"
printf '\nfuzz.sh: no crash in %s\n' "${TARGETS[*]}"
