#!/usr/bin/env bash
# usage: bench/upgrade-probe.sh BIN [perf]: the bench archive (bench/run.sh makes it) pushed as v1 to :1 in a fresh
# registry, then v2 to :2 (upgrade) and again (warm), timed, and v2 cold into another registry;
# with "perf": `perf record` of the upgrade only. A quick probe of bench/run.sh's upgrade rows.
# REUSE=trust-registry (or any-encoding) times the upgrade and warm pushes with that --reuse.
set -euo pipefail
BIN=$1; MODE=${2:-time}; REUSE=${REUSE:-exact}
LIB=$(dirname "$0")/benchlib.py
A=/tmp/imageimport-bench/polyglot-docker-save.tar
A2=/tmp/imageimport-bench/polyglot-v2-docker-save.tar
D=$(mktemp -d /tmp/prof.XXXX)
port=$(python3 $LIB free-port)
python3 $LIB registry-config $D $port
docker-registry serve $D/config.yml > $D/reg.log 2>&1 & RP=$!
trap 'kill $RP' EXIT
python3 $LIB wait-http http://127.0.0.1:$port/v2/ 30
H=127.0.0.1:$port
$BIN push --insecure -q $A $H/bench/ii:1 >/dev/null
case $MODE in
  perf) perf record -F 499 -g -o /tmp/perf.v2.data -- $BIN push --insecure -q --reuse $REUSE $A2 $H/bench/ii:2 ;;
  *) /usr/bin/time -f "v2-upgrade ($REUSE) wall %e s cpu %U+%S rss %M KB" $BIN push --insecure -q --reuse $REUSE $A2 $H/bench/ii:2
     /usr/bin/time -f "v2-warm ($REUSE) wall %e s cpu %U+%S rss %M KB" $BIN push --insecure -q --reuse $REUSE $A2 $H/bench/ii:2 ;;
esac
if [[ $MODE == time ]]; then
  port2=$(python3 $LIB free-port); mkdir -p $D/r2; python3 $LIB registry-config $D/r2 $port2
  docker-registry serve $D/r2/config.yml > $D/r2/reg.log 2>&1 & RP2=$!
  python3 $LIB wait-http http://127.0.0.1:$port2/v2/ 30
  /usr/bin/time -f "v2-cold wall %e s cpu %U+%S rss %M KB" $BIN push --insecure -q $A2 127.0.0.1:$port2/bench/ii:2
  kill $RP2
fi
rm -rf $D
