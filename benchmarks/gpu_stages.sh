# Shared by the GPU check scripts (sourced, not run): the work folder, wheels from .whl/, and the
# stage helper that repacks $WORK into $OUT/$NAME.tar.gz after every stage (a cut-off call still
# returns the stages before it). Needs OUT, WORK, NAME and PY set by the caller.
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
SECONDS=0
pack() { tar czf "$OUT/$NAME.tar.gz.part" -C "$WORK" . && mv "$OUT/$NAME.tar.gz.part" "$OUT/$NAME.tar.gz"; }
stage() { pack; echo "=== [$SECONDS s] $*"; }
