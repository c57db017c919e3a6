# Shared helpers for scripts/: install what is missing, on Debian / Raspberry Pi OS.
# shellcheck shell=bash

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
# apt_need PKG... : install the Debian packages that are not installed yet.
apt_need() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing: ${missing[*]}"
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_rust: cargo 1.85 or newer (Debian's own cargo is older: install rustup's).
need_rust() {
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
  if ! command -v cargo >/dev/null 2>&1; then
    apt_need curl ca-certificates build-essential pkg-config
    echo "==> installing the Rust toolchain (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  apt_need gcc libc6-dev pkg-config
}

# need_pymodbus: a virtualenv under target/ (ignored by git) with pymodbus and pyserial, the Modbus
# test peer (crates/weir-modbus/tests/peer/modbus_peer.py uses the pymodbus 3.16 simulator API).
# Exports WEIR_MODBUS_PYTHON, the interpreter the tests start the peer with (default: that venv,
# else python3). A venv keeps Debian's externally managed system python untouched.
need_pymodbus() {
  local venv="${WEIR_MODBUS_VENV:-$PWD/target/modbus-venv}"
  if ! "$venv/bin/python" -c 'import pymodbus, serial' >/dev/null 2>&1; then
    apt_need python3 python3-venv
    echo "==> installing pymodbus and pyserial into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'pymodbus>=3.16,<3.17' pyserial
  fi
  export WEIR_MODBUS_PYTHON="$venv/bin/python"
}

# CoAP test peers: libcoap's coap-client-notls (Debian) and aiocoap (PyPI) in a virtualenv under
# target/ (ignored by git; Debian's system python is externally managed). tests/coap.rs starts the
# aiocoap peer with $WEIR_TEST_PYTHON.
need_coap_peers() {
  apt_need libcoap3-bin
  local venv="${WEIR_COAP_VENV:-$PWD/target/coap-venv}"
  if ! "$venv/bin/python" -c 'import aiocoap' >/dev/null 2>&1; then
    apt_need python3 python3-venv
    echo "==> installing aiocoap into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'aiocoap==0.4.17'
  fi
  export WEIR_TEST_PYTHON="$venv/bin/python"
}

# Zigbee test peer: zigpy-znp and zigpy (PyPI) in a virtualenv under target/ (ignored by git). The
# Z-Stack ZNP coordinator emulator (crates/weir-zigbee/tests/peer/znp_emulator.py) and the codec
# vector generator encode every frame with zigpy-znp's command definitions and zigpy's ZCL.
# Exports WEIR_ZIGBEE_PYTHON, the interpreter the tests start the emulator with.
need_zigbee_peers() {
  apt_need socat
  local venv="${WEIR_ZIGBEE_VENV:-$PWD/target/zigbee-venv}"
  if ! "$venv/bin/python" -c 'import zigpy_znp, zigpy' >/dev/null 2>&1; then
    apt_need python3 python3-venv
    echo "==> installing zigpy-znp and zigpy into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'zigpy-znp==1.1.1' 'zigpy==2.4.0'
  fi
  export WEIR_ZIGBEE_PYTHON="$venv/bin/python"
}

# need_herdsman: zigbee-herdsman 10.9.5 (npm, the library under Zigbee2MQTT) under target/herdsman,
# an independent host that tests/zigbee.rs runs against the ZNP emulator (11.x does not install
# from the registry; 10.9.5 runs on node 20). Exports WEIR_HERDSMAN_NODE_PATH (its node_modules).
need_herdsman() {
  local dir="${WEIR_HERDSMAN_DIR:-$PWD/target/herdsman}"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_need nodejs npm
  fi
  if [ "$(node -p 'require(process.argv[1] + "/node_modules/zigbee-herdsman/package.json").version' "$dir" 2>/dev/null)" != "10.9.5" ]; then
    echo "==> installing zigbee-herdsman 10.9.5 into $dir"
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"name":"weir-herdsman-peer","private":true}' > "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error --save-exact zigbee-herdsman@10.9.5)
  fi
  export WEIR_HERDSMAN_NODE_PATH="$dir/node_modules"
}

# need_sparkplug_peers: Eclipse Tahu's sparkplug-payload (npm, the reference Sparkplug B decoder)
# under target/sparkplug-node and a virtualenv under target/ with pysparkplug (PyPI, an independent
# Sparkplug B host implementation). Exports WEIR_SPARKPLUG_NODE_PATH and WEIR_SPARKPLUG_PYTHON.
need_sparkplug_peers() {
  local dir="${WEIR_SPARKPLUG_NODE_DIR:-$PWD/target/sparkplug-node}"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_need nodejs npm
  fi
  if [ "$(node -p 'require(process.argv[1] + "/node_modules/sparkplug-payload/package.json").version' "$dir" 2>/dev/null)" != "1.0.3" ]; then
    echo "==> installing sparkplug-payload 1.0.3 into $dir"
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"name":"weir-sparkplug-peer","private":true}' > "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error --save-exact sparkplug-payload@1.0.3)
  fi
  export WEIR_SPARKPLUG_NODE_PATH="$dir/node_modules"
  local venv="${WEIR_SPARKPLUG_VENV:-$PWD/target/sparkplug-venv}"
  if ! "$venv/bin/python" -c 'import pysparkplug' >/dev/null 2>&1; then
    apt_need python3 python3-venv
    echo "==> creating $venv with pysparkplug"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'pysparkplug==0.6.1'
  fi
  export WEIR_SPARKPLUG_PYTHON="$venv/bin/python"
}

# BLE test peers: python-dbusmock's BlueZ template on a private D-Bus (Debian python3-dbusmock, run
# by /usr/bin/python3, with dbus-daemon), libdbus for btleplug's build, and a virtualenv under
# target/ (ignored by git) with the reference decoders PyPI bthome-ble and ruuvi-decoders that
# tests/peers/ble_vectors.py turns into crates/weir-ble/tests/vectors.json. Exports
# WEIR_BLE_PYTHON (that venv) and WEIR_DBUSMOCK_PYTHON (the interpreter that has dbusmock).
need_ble_peers() {
  apt_need dbus-daemon python3-dbusmock python3-dbus libdbus-1-dev pkg-config
  local venv="${WEIR_BLE_VENV:-$PWD/target/ble-venv}"
  if ! "$venv/bin/python" -c 'import bthome_ble, ruuvi_decoders, atc_ble' >/dev/null 2>&1; then
    apt_need python3 python3-venv
    echo "==> installing bthome-ble, ruuvi-decoders and atc-ble into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'bthome-ble==3.25.0' 'ruuvi-decoders==0.2.0' \
      'atc-ble==0.1.0' 'home-assistant-bluetooth==2.0.0' 'pycryptodomex==3.24.2'  # atc-ble 0.1.0 leaves out the last two
  fi
  export WEIR_BLE_PYTHON="$venv/bin/python"
  export WEIR_DBUSMOCK_PYTHON=/usr/bin/python3
}

# need_home_assistant: a virtualenv under target/ (ignored by git) with PyPI homeassistant 2024.3.3,
# the newest release for Python 3.11, and paho-mqtt 1.6.1 (what its MQTT integration requires):
# tests/peers/ha_discovery_check.py validates Weir's discovery messages with HA's own schemas.
# A cold install takes ~6 minutes (355 s measured, ~100 packages). Exports WEIR_HA_PYTHON.
need_home_assistant() {
  local venv="${WEIR_HA_VENV:-$PWD/target/ha-venv}"
  if ! "$venv/bin/python" -c 'import homeassistant.components.mqtt.sensor, jinja2' >/dev/null 2>&1; then
    apt_need python3 python3-venv
    echo "==> installing homeassistant 2024.3.3 into $venv (a few minutes)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    # josepy 2 dropped what HA 2024.3's cloud component imports (a live HA needs josepy 1).
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'homeassistant==2024.3.3' 'paho-mqtt==1.6.1' 'josepy<2'
  fi
  export WEIR_HA_PYTHON="$venv/bin/python"
}

# need_tflite_build: what the `tflite` crate (feature `tflite`, in the default build) needs to build
# TF Lite 1.15's C++ from the sources it bundles: libclang for bindgen, g++ and make; and ccache.
# That C++ costs about 7 minutes on 2 cores and its build script redoes it in every cargo profile
# (dev for the tests, release for the binary) because each profile has its own OUT_DIR. Its
# Makefile takes CXX from CXX_<target> (the build script passes it on), so routing the compiler
# through ccache, with CCACHE_BASEDIR at the target dir so the per-profile OUT_DIR paths hash the
# same, makes the second profile of a target a cache hit (about 20 s instead of 7 min). Pass the
# target triples whose C++ compiler to wrap (default: this machine's).
need_tflite_build() {
  apt_need libclang-dev g++ make ccache
  local t var
  for t in "${@:-$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')}"; do
    [ -n "$t" ] || continue
    var="CXX_${t//-/_}"
    case "$t" in
      x86_64-unknown-linux-gnu) export "$var=ccache g++" ;;
      aarch64-unknown-linux-gnu) export "$var=ccache aarch64-linux-gnu-g++" ;;
    esac
  done
  local dir="${CARGO_TARGET_DIR:-$PWD/target}"
  mkdir -p "$dir"
  export CCACHE_BASEDIR
  CCACHE_BASEDIR="$(cd "$dir" && pwd -P)"
}

# need_infer_python: a virtualenv under target/ (ignored by git) with the reference TF Lite
# interpreter (PyPI ai-edge-litert), the schema's Python builders (PyPI tflite), flatbuffers and
# numpy, for scripts/train-anomaly. Exports WEIR_INFER_PYTHON. The Rust tests do not need it: they
# read the committed vector file.
need_infer_python() {
  local venv="${WEIR_INFER_VENV:-$PWD/target/infer-venv}"
  if ! "$venv/bin/python" -c 'import ai_edge_litert, tflite, flatbuffers, numpy' >/dev/null 2>&1; then
    apt_need python3 python3-venv
    echo "==> installing ai-edge-litert, tflite, flatbuffers and numpy into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'ai-edge-litert==2.3.0' 'tflite==2.18.0' 'flatbuffers==25.12.19' 'numpy==2.4.6'
  fi
  export WEIR_INFER_PYTHON="$venv/bin/python"
}
