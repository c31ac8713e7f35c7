#!/usr/bin/env bash
# Compiles the app's Kotlin sources against stub Android/AndroidX/LiteRT classes on a desktop JVM and runs
# checks/Checks.kt (the app's classes against an in-memory fake model, on files export_assets.py writes), then
# crosscheck.py. See README.md.
# Needs: a JDK (javac), Python 3 with numpy, the Kotlin compiler (KOTLINC=/path/to/kotlinc, else npm's
# kotlin-compiler package in ~/.cache) and Android's org.json (ORG_JSON_JAR, else Debian's libandroid-json-java).
# It installs nothing: a missing tool is named with the command that installs it, and the script exits 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"  # export_assets.py imports the package from the checkout
app="$here/../app/src/main"

kotlin_version=2.4.20
prefix="${XDG_CACHE_HOME:-$HOME/.cache}/tinytl-kotlinc-$kotlin_version"
if [ -z "${KOTLINC:-}" ] && [ -x "$prefix/node_modules/kotlin-compiler/bin/kotlinc" ]; then
    KOTLINC="$prefix/node_modules/kotlin-compiler/bin/kotlinc"
fi
ORG_JSON_JAR="${ORG_JSON_JAR:-/usr/share/java/com.android.json.jar}"

missing=()
command -v javac >/dev/null || missing+=("a JDK: sudo apt-get install default-jdk-headless")
python3 -c "import numpy" 2>/dev/null || missing+=("Python 3 with numpy: sudo apt-get install python3-numpy")
[ -n "${KOTLINC:-}" ] || missing+=("Kotlin $kotlin_version: npm install --prefix '$prefix' kotlin-compiler@$kotlin_version \
&& chmod +x '$prefix'/node_modules/kotlin-compiler/bin/*   (or set KOTLINC=/path/to/kotlinc)")
[ -f "$ORG_JSON_JAR" ] || missing+=("Android's org.json: sudo apt-get install libandroid-json-java   (or set \
ORG_JSON_JAR=/path/to/json.jar)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "jvmcheck installs nothing by itself; it is missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
kotlin_lib="$(dirname "$KOTLINC")/../lib"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# R.java from the real resources, so an id the activity uses but the layout lacks fails to compile.
python3 - "$app/res" "$work/gen/io/github/tinytl/demo/R.java" <<'PY'
import re, sys
from pathlib import Path
res, out = Path(sys.argv[1]), Path(sys.argv[2])
ids = sorted({m for f in res.glob("layout/*.xml") for m in re.findall(r'@\+id/(\w+)', f.read_text())})
layouts = sorted(f.stem for f in res.glob("layout/*.xml"))
strings = sorted({m for f in res.glob("values/*.xml") for m in re.findall(r'<string name="(\w+)"', f.read_text())})
def cls(name, names):
    return f"  public static final class {name} {{ " + " ".join(f"public static final int {n} = {i + 1};" for i, n in enumerate(names)) + " }\n"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text("package io.github.tinytl.demo;\npublic final class R {\n" + cls("id", ids) + cls("layout", layouts) + cls("string", strings) + "}\n")
PY

mkdir -p "$work/classes"
javac -nowarn -d "$work/classes" $(find "$here/stubs" "$work/gen" -name '*.java')
cp="$work/classes:$ORG_JSON_JAR:$kotlin_lib/kotlinx-coroutines-core-jvm.jar"
"$KOTLINC" -nowarn -cp "$cp" -d "$work/classes" \
    $(find "$here/stubs" -name '*.kt') $(find "$app/java" -name '*.kt') "$here/checks/Checks.kt"
PYTHONPATH="$repo" python3 "$here/export_assets.py" "$work" "$here/checks/model.json"
"$(dirname "$KOTLINC")/kotlin" -cp "$work/classes:$cp" -Dwork.dir="$work" -Dmodel.json="$here/checks/model.json" jvmcheck.ChecksKt
python3 "$here/crosscheck.py" "$work" "$here/checks/model.json"
