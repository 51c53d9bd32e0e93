"""tc netem for real: Debian's stock kernel (sch_netem as a module) in a qemu guest.

The pure parts (qemu argument list, initramfs archive, accelerator choice) are checked without a
guest. The live tests boot ONE guest for all fidelity checks (module fixture) and skip, with the
reason, where qemu, a static busybox or a kernel with sch_netem is missing. qemu itself needs no
root (the guest is root inside); they carry the ``root`` marker because CI runs the root tier.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from netem import kvmcheck, kvmguest

ICOUNT_SHIFT = 0


def _live_skip_reason() -> str | None:
    reason = kvmguest.guest_unavailable_reason()
    if reason:
        return reason
    if kvmguest.find_kernel() is None:
        return ("no kernel with sch_netem: run `python -m netem.kvmguest fetch-kernel` "
                "(apt-get download linux-image-amd64, ~70 MB) or install linux-image-amd64")
    return None


def _clock() -> tuple[str, int | None]:
    # accel auto: hardware KVM on the wall clock where it can boot a stock kernel; otherwise
    # qemu's software CPU on its icount virtual clock, which keeps netem's timers and the probes'
    # clock independent of host load (see docs/netem-kvm.md). The shift is ignored under KVM.
    return "auto", ICOUNT_SHIFT


# ---------------------------------------------------------------- pure parts (no guest)


def _fake_kernel(tmp_path: Path) -> kvmguest.GuestKernel:
    moddir = tmp_path / "lib" / "modules" / "9.9.9-test"
    (moddir / "kernel" / "net" / "sched").mkdir(parents=True)
    return kvmguest.GuestKernel("9.9.9-test", tmp_path / "boot" / "vmlinuz-9.9.9-test", moddir)


def test_qemu_argv_kvm_and_tcg(tmp_path: Path) -> None:
    kernel = _fake_kernel(tmp_path)
    kvm = kvmguest.qemu_argv(kernel, tmp_path / "i.cpio", tmp_path / "io", accel="kvm")
    assert kvm[0] == kvmguest.QEMU_BINARY
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    assert kvm[kvm.index("-cpu") + 1] == kvmguest.DEFAULT_CPU_MODEL
    assert "-icount" not in kvm
    virtfs = [kvm[i + 1] for i, a in enumerate(kvm) if a == "-virtfs"]
    assert any("path=/," in v and "readonly=on" in v and "mount_tag=hostroot" in v
               for v in virtfs), virtfs
    assert any(f"path={tmp_path / 'io'}," in v and "readonly" not in v for v in virtfs), virtfs
    append = kvm[kvm.index("-append") + 1]
    assert f"edgebed.modroot={tmp_path.resolve()}" in append and "console=ttyS0" in append
    tcg = kvmguest.qemu_argv(kernel, tmp_path / "i.cpio", tmp_path / "io", accel="tcg",
                             icount_shift=0)
    assert tcg[tcg.index("-accel") + 1] == "tcg"
    assert tcg[tcg.index("-icount") + 1] == "shift=0,sleep=off"
    with pytest.raises(ValueError, match="memory_mb must be at least 256, got 64"):
        kvmguest.qemu_argv(kernel, tmp_path / "i", tmp_path, memory_mb=64)
    with pytest.raises(ValueError, match="accel must be one of auto, kvm, tcg, got 'xen'"):
        kvmguest.choose_accel("xen")


def test_cpio_archive_lists_with_busybox(tmp_path: Path) -> None:
    """The hand-rolled newc writer produces an archive a real cpio reads back intact."""
    busybox = kvmguest.find_static_busybox()
    if busybox is None:
        pytest.skip("no static busybox to read the archive back (apt-get install busybox-static)")
    data = kvmguest._cpio_newc([("d", 0o040755, b""), ("d/f.txt", 0o100644, b"hello\n"),
                                ("init", 0o100755, b"#!/bin/sh\n")])
    archive = tmp_path / "a.cpio"
    archive.write_bytes(data)
    out = tmp_path / "x"
    out.mkdir()
    with archive.open("rb") as fh:
        subprocess.run([str(busybox), "cpio", "-id"], stdin=fh, cwd=out, check=True,
                       capture_output=True)
    assert (out / "d" / "f.txt").read_bytes() == b"hello\n"
    assert (out / "init").stat().st_mode & 0o111


def test_init_script_loads_modules_in_order() -> None:
    script = kvmguest.init_script(["virtio", "9pnet", "9p"])
    loads = [line.split()[1] for line in script.splitlines() if line.startswith("insmod ")]
    assert loads == ["/modules/virtio.ko", "/modules/9pnet.ko", "/modules/9p.ko"]
    assert "poweroff -f" in script and "mount_tag" not in script
    assert "mount -t 9p -o $OPTS,ro,cache=loose hostroot" in script


def test_module_load_order_resolves_dependencies() -> None:
    kernel = kvmguest.find_kernel()
    if kernel is None:
        pytest.skip("no kernel with sch_netem (python -m netem.kvmguest fetch-kernel)")
    order = [p.name for p in kvmguest.module_load_order(kernel, ["9p"])]
    assert order[-1].startswith("9p.ko"), order
    assert order.index("9pnet.ko") < order.index("9p.ko"), order
    with pytest.raises(kvmguest.GuestError, match="has no module no_such_mod"):
        kvmguest.module_load_order(kernel, ["no_such_mod"])


# ---------------------------------------------------------------- live guest


@pytest.fixture(scope="module")
def guest_checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = _live_skip_reason()
    if reason:
        pytest.skip(reason)
    accel, icount = _clock()
    result = kvmcheck.run_checks(n=500, n_loss=1000, accel=accel, icount_shift=icount,
                                 timeout_s=1500, io_dir=tmp_path_factory.mktemp("kvmcheck"))
    print(kvmcheck.format_result(result))
    if "delay" not in result:
        pytest.fail(f"guest checks did not run: {result.get('error')}")
    return result




@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_guest_kernel_has_netem_and_tc_argvs_apply(guest_checks: dict[str, Any]) -> None:
    kernel = kvmguest.find_kernel()
    assert kernel is not None and guest_checks["kernel"] == kernel.version
    argvs = guest_checks["tc_argvs"]
    netem_qdiscs = [a for a in argvs if "netem" in a]
    assert len(netem_qdiscs) == 10, netem_qdiscs  # 5 links x (egress + ifb ingress)
    assert any("edgebed-int-30-120" in a for a in argvs)
    assert guest_checks["probe_errors"] == {}


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", list(kvmcheck.DELAY_CHECKS))
def test_netem_delay_fidelity(guest_checks: dict[str, Any], name: str) -> None:
    from netem.probe import format_table

    report = next(r for r in guest_checks["delay"] if r["link"] == name)
    table = format_table([report])
    assert report["n"] >= 500, table
    assert report["mean_ok"], (
        f"{name}: mean configured {report['configured']['mean_ms']:.3f} ms, achieved "
        f"{report['achieved']['mean_ms']:.3f} ms (tolerance {report['mean_tolerance_ms']:.3f} ms)"
        f"\n{table}")
    assert report["ks_ok"], f"{name}: KS p={report['ks_pvalue']:.4f} < 0.01\n{table}"


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_netem_rate_within_5pct(guest_checks: dict[str, Any]) -> None:
    rate = guest_checks["rate"]
    assert rate["ok"], (f"configured {rate['configured_mbit']} Mbit/s, measured "
                        f"{rate['rate_mbit']:.3f} Mbit/s (allowed 0.95–1.05 x)")


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_netem_loss_ratio(guest_checks: dict[str, Any]) -> None:
    loss = guest_checks["loss"]
    assert loss["packets_offered"] >= 400, loss
    assert loss["ok"], (f"configured {loss['configured_loss_pct']} %, netem dropped "
                        f"{loss['packets_dropped']}/{loss['packets_offered']} = "
                        f"{loss['measured_loss_pct']:.2f} % (±{loss['tolerance_pct']:.2f})")
    # Documented semantics: a lost segment is retransmitted, so some probes pay an RTO.
    assert loss["probes_slowed_by_retransmission"] > 0, loss


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_guest_reports_exit_status_and_output(tmp_path: Path) -> None:
    reason = _live_skip_reason()
    if reason:
        pytest.skip(reason)
    accel, icount = _clock()
    res = kvmguest.run_in_guest(
        ["sh", "-c", "uname -r; grep -c . /proc/modules >/dev/null; echo edgebed-out > "
         "$EDGEBED_GUEST_OUT/f; echo to-stderr >&2; exit 3"],
        accel=accel, icount_shift=icount, timeout_s=800, io_dir=tmp_path / "io")
    kernel = kvmguest.find_kernel()
    assert kernel is not None
    assert res.returncode == 3, res.console[-2000:]
    assert kernel.version in res.output and "to-stderr" in res.output, res.output
    assert (res.out_dir / "f").read_text() == "edgebed-out\n"
