"""Benchmark: tc netem fidelity on a kernel that has netem (Debian's stock kernel in a qemu guest).

Boots ONE guest (netem.kvmguest), shapes a veth pair between two network namespaces with the
links backend's tc argv lists (netem.tc builders) and prints configured vs achieved round trips
(fixed 10 ms, integer-uniform 30–120 ms, normal 50 ± 10 ms; ≥ 500 probes each), the 1 Mbit/s rate
and the 5 % loss as counted by netem, plus timings.

    python bench/bench_netem_kvm.py                   # virtual clock (TCG icount) where no KVM
    python bench/bench_netem_kvm.py --clock realtime  # guest on the host's wall clock
    python bench/bench_netem_kvm.py --fetch-kernel    # first download Debian's kernel (~70 MB)

Exit status: 0 all checks pass, 1 a check fails, 2 no guest can run here (reason printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netem import kvmcheck, kvmguest

ICOUNT_SHIFT = 0  # 1 ns of guest time per guest instruction (a ~1 GHz, IPC-1 virtual CPU)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="minimum probes per delay check (default 500; more where the mean tolerance needs them)")
    parser.add_argument("--n-loss", type=int, default=1000, help="probes on the 5 %% loss link")
    parser.add_argument("--accel", choices=kvmguest.ACCELS, default="auto")
    parser.add_argument("--clock", choices=("auto", "icount", "realtime"), default="auto",
                        help="auto: KVM on the wall clock, or TCG on the icount virtual clock")
    parser.add_argument("--parallel", action="store_true", help="probe all links at once")
    parser.add_argument("--fetch-kernel", action="store_true",
                        help="apt-get download + unpack linux-image-amd64 into .edgebed/kvm first")
    parser.add_argument("--timeout-s", type=float, default=1200.0)
    parser.add_argument("--json", default=None, help="write the full result here")
    parser.add_argument("--echo", action="store_true", help="stream the guest console")
    args = parser.parse_args()

    if args.fetch_kernel and kvmguest.find_kernel() is None:
        t0 = time.monotonic()
        kernel = kvmguest.fetch_debian_kernel()
        print(f"fetched kernel {kernel.version} in {time.monotonic() - t0:.1f} s")
    reason = kvmguest.guest_unavailable_reason()
    if reason is None and kvmguest.find_kernel() is None:
        reason = "no kernel with sch_netem (run with --fetch-kernel)"
    if reason:
        print(f"SKIPPED: {reason}")
        return 2
    accel, why = kvmguest.choose_accel(args.accel)
    clock = args.clock
    if clock == "auto":
        clock = "icount" if accel == "tcg" else "realtime"
    if clock == "icount" and accel != "tcg":
        parser.error("--clock icount needs the tcg accelerator (--accel tcg)")
    print(f"accelerator: {accel} ({why})")
    print(f"guest clock: {clock}; probes per delay check: {args.n}; host load average "
          f"{Path('/proc/loadavg').read_text().split()[0]} (figures measured under that load)")
    result = kvmcheck.run_checks(
        n=args.n, n_loss=args.n_loss, accel=args.accel,
        icount_shift=ICOUNT_SHIFT if clock == "icount" else None,
        parallel=args.parallel, timeout_s=args.timeout_s, echo=args.echo)
    print(kvmcheck.format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
