#!/usr/bin/env bash
# The fleet-scale run behind docs/scaling.md: N simulated devices (`drover simulate`, the real
# agent code) on Mosquitto, a fleet server (`drover fleet serve`, SQLite file) watching them, and
# a push of the iris bundle to the whole group. Prints the simulator's figures (memory per
# device), the push's time, and the fleet server's load: CPU time, peak RSS, messages stored,
# database size.
#
#   tools/scale/fleet.sh [DEVICES] [SECONDS]      (defaults: 1000 devices, 150 s)
#
# Needs the release `drover` (cargo build --release -p drover-tools --bin drover) and Mosquitto.
# Everything lives in a temporary directory and every process it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
devices=${1:-1000}
seconds=${2:-150}
drover=${DROVER:-target/release/drover}
[ -x "$drover" ] || { echo "no $drover: cargo build --release -p drover-tools --bin drover" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto)" >&2; exit 2; }
drover=$(realpath "$drover")
models=$(realpath models)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt_port=$(free_port)
http_port=$(free_port)
cat > mosquitto.conf <<CONF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_inflight_messages 100
max_queued_messages 100000
CONF
mosquitto -c mosquitto.conf >mosquitto.log 2>&1 &
pids+=($!)
broker="127.0.0.1:$mqtt_port"

"$drover" keygen --role root --out keys >/dev/null
"$drover" keygen --role release --out keys >/dev/null
"$drover" root init --key keys/root.key --out root.json >/dev/null
"$drover" delegate --root root.json --root-key keys/root.key --release keys/release.pub --models iris \
  --out release.json >/dev/null
"$drover" bundle "$models/iris_logreg.onnx" --name iris --version 1 \
  --selftest "$models/reference/iris_logreg.input.jsonl" --reference "$models/data/iris.train.jsonl" \
  --feature-names "$(cat "$models/data/iris.features.txt")" \
  --key keys/release.key --delegation release.json --out iris-v1.drv >/dev/null
mkdir bundles && cp iris-v1.drv bundles/

"$drover" fleet serve --broker "$broker" --db fleet.db --http "127.0.0.1:$http_port" --bundles bundles \
  >fleet.log 2>&1 &
fleet=$!
pids+=($fleet)
cat > profile.toml <<CONF
rate_hz = 2
telemetry_period_s = 10
drift_window = 100
drift_share = 0.1
drift_after_s = 30
CONF
"$drover" simulate --devices "$devices" --root root.json --profile profile.toml --duration "${seconds}s" \
  --summary summary.json --report-every 30s --broker "$broker" >simulate.log 2>&1 &
sim=$!
pids+=($sim)

# CPU ticks of the fleet server (utime + stime, /proc/PID/stat fields 14 and 15).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
peak_rss=0
sample_rss() {
  local r
  r=$(awk '/VmRSS/ {print $2}' "/proc/$fleet/status")
  [ "$r" -gt "$peak_rss" ] && peak_rss=$r
  return 0
}
# Sums the samples of /metrics whose name and labels start with $1.
metric() {
  curl -s "http://127.0.0.1:$http_port/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'
}
online='drover_fleet_devices{state="online"'
stored='drover_fleet_ingest_messages_total{outcome="stored"}'

# The devices come online: wait until the fleet server knows all of them.
start=$SECONDS
until [ "$(metric "$online")" = "$devices" ]; do
  [ $((SECONDS - start)) -lt 120 ] || { echo "only $(metric "$online") devices came online" >&2; tail fleet.log simulate.log >&2; exit 1; }
  sample_rss; sleep 1
done
echo "devices online after $((SECONDS - start)) s"

echo "push iris v1 to the group (${devices} devices):"
push_start=$(date +%s.%N)
"$drover" push iris-v1.drv --group sim --broker "$broker" --timeout 240s >push.log 2>&1 || echo "the push did not reach every device (see below)" 
push_end=$(date +%s.%N)
tail -4 push.log
printf 'push: %.1f s for %s devices\n' "$(echo "$push_end - $push_start" | bc)" "$devices"

# The fleet server's load over a steady minute of telemetry from every device.
sleep 5
t0=$(ticks "$fleet"); s0=$(metric "$stored"); w0=$SECONDS
for _ in $(seq 60); do sample_rss; sleep 1; done
t1=$(ticks "$fleet"); s1=$(metric "$stored"); w1=$SECONDS
wait "$sim"
echo
echo "simulator summary:"; cat summary.json; echo
cpu=$(echo "scale=1; 100 * ($t1 - $t0) / $hz / ($w1 - $w0)" | bc)
rate=$(echo "scale=1; ($s1 - $s0) / ($w1 - $w0)" | bc)
echo "fleet server, steady minute: ${cpu} % of one core, ${rate} messages/s stored, peak RSS $((peak_rss / 1024)) MiB"
echo "fleet database: $(du -k fleet.db* | awk '{s += $1} END {print s}') KiB after $((SECONDS - start)) s"
