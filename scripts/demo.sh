#!/usr/bin/env bash
# The demo: set up, make a synthetic DoRobot recording (2 cameras + a microphone) in demo/inbox,
# register it in a persistent Dagster instance (dagster_home/), convert it with
# `dagster asset materialize`, and print what was written.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DAGSTER_HOME="$PWD/dagster_home"
export DOROBOT_INBOX="$PWD/demo/inbox"
export DOROBOT_OUTPUT="$PWD/demo/output"
mkdir -p "$DAGSTER_HOME" "$DOROBOT_INBOX" "$DOROBOT_OUTPUT"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml.template "$DAGSTER_HOME/dagster.yaml"
REC="$DOROBOT_INBOX/demo_recording"
if [ ! -f "$REC/meta/info.json" ]; then
  rm -rf "$REC"
  .venv/bin/dorobot-assets make-sample "$REC" --episodes 8 --audio
fi
KEY=$(.venv/bin/dorobot-assets register "$REC" | cut -f1)
.venv/bin/dagster asset materialize -m dorobot_assets --select '*' --partition "$KEY"
echo
echo "v3.0 dataset written to $DOROBOT_OUTPUT/$KEY:"
.venv/bin/dorobot-assets validate "$DOROBOT_OUTPUT/$KEY" || true
find "$DOROBOT_OUTPUT/$KEY" -type f | sort | sed "s|$DOROBOT_OUTPUT/$KEY/|  |"
