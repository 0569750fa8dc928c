#!/usr/bin/env bash
# Builds the example firmware (release, thumbv7em-none-eabihf) and prints its flash and RAM use:
# flash = .vector_table + .text + .rodata + .data (its initial values), static RAM = .data + .bss,
# and the largest stack frames (from the function prologues: everything in the firmware lives on
# the stack, nothing is allocated). Needs Debian's binutils-arm-none-eabi (tests/run installs it).
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked --quiet
target_dir="${CARGO_TARGET_DIR:-target}"
elf="$target_dir/thumbv7em-none-eabihf/release/drover-example-firmware"
arm-none-eabi-size -A "$elf" | awk '
  $1 == ".vector_table" || $1 == ".text" || $1 == ".rodata" { flash += $2 }
  $1 == ".data" { flash += $2; ram += $2 }
  $1 == ".bss" || $1 == ".uninit" { ram += $2 }
  END { printf "example firmware: flash %d B (%.1f KiB of 512 KiB), static RAM %d B\n", flash, flash / 1024, ram }'
arm-none-eabi-objdump -d --no-show-raw-insn "$elf" | awk '
  /^[0-9a-f]+ <.*>:$/ { fn = $2 }
  /sub(\.w)?[ \t]+sp, (sp, )?#[0-9]+/ { match($0, /#[0-9]+/); n = substr($0, RSTART + 1, RLENGTH - 1) + 0; if (n >= 256) printf "  stack frame %6d B  %s\n", n, fn }' | sort -k3 -rn | head -5
