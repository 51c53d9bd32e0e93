"""Boot a throwaway KVM guest on Debian's stock kernel over the host's read-only root, run one
command inside it and collect its output.

Why: this host's kernel has no ``sch_netem``; Debian's stock kernel (``linux-image-amd64``) builds
it as a module. The guest runs that kernel with the host's root filesystem shared read-only over
virtio-9p, so it executes the host's Python, the repository's ``.venv`` and the repository code
unchanged. Writable places in the guest are tmpfs (``/tmp``, ``/run``, ``/var/tmp``, ``/mnt``)
plus one writable 9p share, the *I/O directory*, mounted at ``/mnt/edgebed`` (the command's
``EDGEBED_GUEST_OUT``), through which results come back to the host.

Pieces, pure builders separate from runners:

- :func:`find_kernel` discovers a kernel (``vmlinuz-*`` with its ``lib/modules/<ver>`` holding
  ``sch_netem``): ``$EDGEBED_KVM_KERNEL``, then the cache ``.edgebed/kvm/kernel`` filled by
  :func:`fetch_debian_kernel` (``apt-get download`` + ``dpkg-deb -x``, host untouched), then
  ``/boot``.
- :func:`build_initramfs` writes a small cached cpio: static busybox, the virtio/9p modules and
  an ``/init`` that mounts the shares, binds the kernel's modules at ``/lib/modules/<ver>`` (so
  ``modprobe`` and the kernel's on-demand loading work), runs the command and powers off.
- :func:`qemu_argv` builds the ``qemu-system-x86_64`` argument list; :func:`run_in_guest` runs it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".edgebed" / "kvm"
KERNEL_META_PACKAGE = "linux-image-amd64"
QEMU_BINARY = "qemu-system-x86_64"
# The host CPU minus IA32_ARCH_CAPABILITIES: under nested KVM (Firecracker-style hosts) qemu
# aborts with "failed to set MSR 0x10a" when that MSR is passed through.
DEFAULT_CPU_MODEL = "host,-arch-capabilities"
ACCELS = ("auto", "kvm", "tcg")
GUEST_IO_DIR = "/mnt/edgebed"
GUEST_OUT_DIR = GUEST_IO_DIR + "/out"
# Modules the initramfs loads itself (with their dependencies) to reach the 9p root.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.gz")
_INIT_VERSION = "5"  # bump when the /init script changes so cached initramfs images rebuild


class GuestError(RuntimeError):
    """The guest could not be built, booted or did not report back."""


@dataclass(frozen=True)
class GuestKernel:
    """A bootable kernel image and the module tree built with it."""

    version: str
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<version>

    @property
    def modules_root(self) -> Path:
        """The tree holding ``lib/modules/<version>`` (``/`` for an installed kernel)."""
        return self.modules_dir.resolve().parents[2]

    def module_path(self, name: str) -> Path | None:
        """The file of module ``name`` (``-`` and ``_`` are interchangeable), if built."""
        wanted = name.replace("-", "_")
        for rel in _module_dep_map(self.modules_dir):
            base = Path(rel).name
            for suffix in _MODULE_SUFFIXES:
                if base.endswith(suffix) and base[: -len(suffix)].replace("-", "_") == wanted:
                    return self.modules_dir / rel
        return None


@dataclass
class GuestResult:
    """What came back from one guest run."""

    returncode: int | None  # the command's exit status; None if it never reported
    output: str  # the command's stdout+stderr
    console: str  # everything on the guest's serial console (kernel, init, command)
    io_dir: Path  # host directory shared as /mnt/edgebed; results in io_dir / "out"
    boot_s: float | None  # guest uptime when the command started (guest clock)
    wall_s: float  # host wall time from qemu start to qemu exit
    qemu_returncode: int | None
    accel: str = "kvm"
    accel_reason: str = ""
    kernel_version: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return self.io_dir / "out"


# ---------------------------------------------------------------- capability and discovery


def guest_unavailable_reason() -> str | None:
    """Why no guest can run here at all (no qemu, no static busybox), or None when one can."""
    if shutil.which(QEMU_BINARY) is None:
        return f"{QEMU_BINARY} not found (apt-get install qemu-system-x86)"
    if find_static_busybox() is None:
        return "no statically linked busybox (apt-get install busybox-static)"
    return None


def kvm_unavailable_reason() -> str | None:
    """Why hardware-assisted KVM cannot boot a stock kernel here, or None when it can."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm (KVM not available on this machine)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    if Path("/sys/module/kvm_pvm").is_dir():
        return (
            "/dev/kvm is served by kvm_pvm (PVM, a software hypervisor for nested guests): "
            "it runs only PVM-enabled guest kernels at speed; a stock kernel's firmware, "
            "decompressor and supervisor code are emulated one instruction at a time "
            "(measured ~0.27 M instructions/s: no kernel message after 120 s)"
        )
    return None


def choose_accel(requested: str = "auto") -> tuple[str, str]:
    """Pick ``kvm`` or ``tcg`` (qemu's software CPU) and say why; ``requested`` may force one."""
    if requested not in ACCELS:
        raise ValueError(f"accel must be one of {', '.join(ACCELS)}, got {requested!r}")
    if requested != "auto":
        return requested, "requested explicitly"
    why_not_kvm = kvm_unavailable_reason()
    if why_not_kvm is None:
        return "kvm", "/dev/kvm usable"
    return "tcg", f"{why_not_kvm}; using qemu TCG (software CPU, same guest kernel)"


def _kernel_from_vmlinuz(vmlinuz: Path, modules_roots: Iterable[Path]) -> GuestKernel | None:
    match = re.fullmatch(r"vmlinuz-(.+)", vmlinuz.name)
    if match is None or not vmlinuz.is_file():
        return None
    version = match.group(1)
    for root in modules_roots:
        moddir = root / version
        if (moddir / "modules.dep").is_file() or (moddir / "modules.order").is_file():
            kernel = GuestKernel(version=version, vmlinuz=vmlinuz, modules_dir=moddir)
            if _has_module_file(moddir, "sch_netem"):
                return kernel
    return None


def _has_module_file(moddir: Path, name: str) -> bool:
    sched = moddir / "kernel" / "net" / "sched"
    return any((sched / f"{name}{suffix}").is_file() for suffix in _MODULE_SUFFIXES)


def _version_key(kernel: GuestKernel) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", kernel.version)]


def find_kernel(cache_dir: Path = DEFAULT_CACHE_DIR) -> GuestKernel | None:
    """Discover a kernel whose module tree has sch_netem; newest first, None if there is none.

    Order: ``$EDGEBED_KVM_KERNEL`` (a vmlinuz path), the fetched cache
    ``<cache_dir>/kernel/boot``, then ``/boot`` (an installed ``linux-image-*``). The running
    host kernel is skipped when it lacks netem, which is the point of the guest.
    """
    explicit = os.environ.get("EDGEBED_KVM_KERNEL")
    if explicit:
        vmlinuz = Path(explicit)
        roots = [vmlinuz.parent.parent / "lib" / "modules", Path("/lib/modules")]
        return _kernel_from_vmlinuz(vmlinuz, roots)
    places = [
        (cache_dir / "kernel" / "boot", [cache_dir / "kernel" / "lib" / "modules"]),
        (Path("/boot"), [Path("/lib/modules")]),
    ]
    for boot, roots in places:
        found = [
            k
            for v in sorted(boot.glob("vmlinuz-*"))
            if (k := _kernel_from_vmlinuz(v, roots)) is not None
        ]
        if found:
            return max(found, key=_version_key)
    return None


def fetch_debian_kernel(
    cache_dir: Path = DEFAULT_CACHE_DIR, package: str = KERNEL_META_PACKAGE
) -> GuestKernel:
    """Download Debian's stock kernel package and unpack it under ``<cache_dir>/kernel``.

    Uses ``apt-get download`` + ``dpkg-deb -x`` so the host's /boot, /lib/modules, initramfs
    hooks and bootloader stay untouched, then ``depmod -b`` for the module index.
    """
    depends = subprocess.run(
        ["apt-cache", "depends", package], check=True, capture_output=True, text=True
    ).stdout
    image = re.search(r"Depends:\s*(linux-image-\S+)", depends)
    if image is None:
        raise GuestError(f"apt-cache depends {package} names no linux-image package:\n{depends}")
    image_pkg = image.group(1)
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", image_pkg], check=True, cwd=downloads)
    debs = sorted(downloads.glob(f"{image_pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise GuestError(f"apt-get download {image_pkg} left no .deb in {downloads}")
    tree = cache_dir / "kernel"
    tree.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tree)], check=True)
    for deb in debs:
        deb.unlink()  # unpacked; the 70 MB package is not needed any more
    version = image_pkg.removeprefix("linux-image-")
    depmod = shutil.which("depmod") or "/usr/sbin/depmod"
    subprocess.run([depmod, "-b", str(tree), version], check=True)
    kernel = _kernel_from_vmlinuz(tree / "boot" / f"vmlinuz-{version}", [tree / "lib" / "modules"])
    if kernel is None:
        raise GuestError(f"{image_pkg} unpacked to {tree} but has no vmlinuz/sch_netem module")
    return kernel


def find_static_busybox() -> Path | None:
    """A statically linked busybox (the initramfs has no C library), or None."""
    candidates = [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    which = shutil.which("busybox")
    if which:
        candidates.append(Path(which))
    for path in candidates:
        if path.is_file() and _is_static_elf(path):
            return path
    return None


def _is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP (dynamic loader) segment."""
    with path.open("rb") as fh:
        header = fh.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


# ---------------------------------------------------------------- modules and initramfs


def _module_dep_map(moddir: Path) -> dict[str, list[str]]:
    """modules.dep as {relative module path: [relative dependency paths]}."""
    dep_file = moddir / "modules.dep"
    if not dep_file.is_file():
        raise GuestError(f"{dep_file} missing: run depmod -b <root> <version> for that tree")
    deps: dict[str, list[str]] = {}
    for line in dep_file.read_text().splitlines():
        if ":" in line:
            mod, rest = line.split(":", 1)
            deps[mod.strip()] = rest.split()
    return deps


def module_load_order(kernel: GuestKernel, names: Sequence[str]) -> list[Path]:
    """Module files for ``names`` and everything they depend on, dependencies first."""
    deps = _module_dep_map(kernel.modules_dir)
    order: list[str] = []

    def visit(rel: str) -> None:
        if rel in order:
            return
        for dep in deps.get(rel, []):
            visit(dep)
        order.append(rel)

    for name in names:
        path = kernel.module_path(name)
        if path is None:
            # Built into the kernel (modules.builtin) is fine; absent altogether is not.
            builtin = (kernel.modules_dir / "modules.builtin").read_text()
            if re.search(rf"/{re.escape(name)}\.ko$", builtin.replace("-", "_"), re.M):
                continue
            raise GuestError(f"kernel {kernel.version} has no module {name}")
        visit(str(path.relative_to(kernel.modules_dir)))
    return [kernel.modules_dir / rel for rel in order]


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def init_script(module_names: Sequence[str]) -> str:
    """The initramfs ``/init`` (busybox sh) loading ``module_names`` in order."""
    loads = "\n".join(
        f'insmod /modules/{name}.ko || fail "insmod {name}"' for name in module_names
    )
    return f"""#!/bin/busybox sh
# edgebed KVM guest init (generated by netem/kvmguest.py, version {_INIT_VERSION})
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "EDGEBED-GUEST-FAIL: $*"; sync; poweroff -f; sleep 5; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "EDGEBED-GUEST-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
{loads}
MODROOT=/
for arg in $(cat /proc/cmdline); do
  case "$arg" in edgebed.modroot=*) MODROOT="${{arg#edgebed.modroot=}}";; esac
done
NR=/newroot
mkdir -p $NR
OPTS=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $OPTS,ro,cache=loose hostroot $NR || fail "mount 9p hostroot"
mount -t proc proc $NR/proc || fail "mount proc"
mount -t sysfs sysfs $NR/sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs $NR/dev || fail "mount devtmpfs"
mkdir -p $NR/dev/pts $NR/dev/shm
mount -t devpts devpts $NR/dev/pts
mount -t tmpfs tmpfs $NR/dev/shm
mkdir -p /hostroot && mount -o bind $NR /hostroot  # the 9p root before tmpfs hides parts of it
for d in {' '.join(d.lstrip('/') for d in GUEST_TMPFS_DIRS)}; do mount -t tmpfs -o mode=1777 tmpfs $NR/$d || fail "tmpfs $d"; done
mkdir -p $NR{GUEST_IO_DIR} $NR/run/edgebed/bin
mount -t 9p -o $OPTS edgebedio $NR{GUEST_IO_DIR} || fail "mount 9p edgebedio"
if [ -s $NR{GUEST_IO_DIR}/binds ]; then
  # Host directories hidden by the tmpfs mounts above (a work tree under /tmp): bind them back.
  while read -r p; do
    mkdir -p "$NR$p" && mount -o bind "/hostroot$p" "$NR$p" || fail "bind $p"
  done < $NR{GUEST_IO_DIR}/binds
fi
if [ "$MODROOT" != "/" ]; then
  # The kernel's modules live outside /lib/modules on the read-only host root: point modprobe
  # there, for commands (PATH wrapper) and for the kernel's on-demand loading (PID 1's root is
  # this initramfs, hence the chroot).
  printf '#!/bin/sh\nexec /sbin/modprobe -d %s "$@"\n' "$MODROOT" > $NR/run/edgebed/bin/modprobe
  printf '#!/bin/sh\nexec chroot %s /sbin/modprobe -d %s "$@"\n' $NR "$MODROOT" > /edgebed-modprobe
  chmod 755 $NR/run/edgebed/bin/modprobe /edgebed-modprobe
  echo /edgebed-modprobe > /proc/sys/kernel/modprobe
fi
mount -t cgroup2 none $NR/sys/fs/cgroup 2>/dev/null
echo "EDGEBED-GUEST-RUN uptime=$(cut -d' ' -f1 /proc/uptime)"
chroot $NR /bin/sh {GUEST_IO_DIR}/run.sh </dev/null
echo "EDGEBED-GUEST-DONE rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
umount $NR{GUEST_IO_DIR}
poweroff -f
sleep 5
"""


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed ``newc`` cpio archive of (name, mode, data) entries (mode has type bits)."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def build_initramfs(
    kernel: GuestKernel,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    busybox: Path | None = None,
) -> Path:
    """Write (or reuse) the cached initramfs for ``kernel`` and return its path."""
    busybox = busybox or find_static_busybox()
    if busybox is None:
        raise GuestError("no statically linked busybox (apt-get install busybox-static)")
    modules = module_load_order(kernel, BOOT_MODULES)
    names = [re.sub(r"\.ko(\.xz|\.gz)?$", "", m.name) for m in modules]
    script = init_script(names)
    digest = hashlib.sha256()
    digest.update(script.encode())
    digest.update(busybox.read_bytes())
    for module in modules:
        digest.update(str(module).encode())
        digest.update(str(module.stat().st_size).encode())
    target = cache_dir / f"initramfs-{kernel.version}-{digest.hexdigest()[:12]}.cpio"
    if target.is_file():
        return target
    dir_mode, file_mode = 0o040755, 0o100755
    entries: list[tuple[str, int, bytes]] = [
        (d, dir_mode, b"") for d in ("bin", "dev", "proc", "sys", "modules", "newroot")
    ]
    entries.append(("bin/busybox", file_mode, busybox.read_bytes()))
    entries.append(("init", file_mode, script.encode()))
    for module, name in zip(modules, names, strict=True):
        entries.append((f"modules/{name}.ko", 0o100644, _read_module(module)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob(f"initramfs-{kernel.version}-*.cpio"):
        stale.unlink(missing_ok=True)  # images of an older /init or busybox
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(_cpio_newc(entries))
    tmp.replace(target)
    return target


# ---------------------------------------------------------------- qemu


def kernel_cmdline(kernel: GuestKernel) -> str:
    """Kernel command line: serial console, quiet, power off on panic, where the modules are."""
    return (
        "console=ttyS0 quiet loglevel=3 panic=-1 "
        f"edgebed.modroot={kernel.modules_root}"
    )


def qemu_argv(
    kernel: GuestKernel,
    initramfs: Path,
    io_dir: Path,
    *,
    memory_mb: int = 1024,
    cpus: int = 1,
    accel: str = "kvm",
    cpu_model: str | None = None,
    icount_shift: int | None = None,
    qemu: str = QEMU_BINARY,
) -> list[str]:
    """The ``qemu-system-x86_64`` argument list booting ``kernel`` with the host root over 9p."""
    if memory_mb < 256:
        raise ValueError(f"memory_mb must be at least 256, got {memory_mb}")
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, got {cpus}")
    if accel == "kvm":
        machine = ["-accel", "kvm", "-cpu", cpu_model or DEFAULT_CPU_MODEL]
    elif accel == "tcg":
        machine = ["-accel", "tcg", "-cpu", cpu_model or "max"]
        if icount_shift is not None:
            # Guest time = instructions x 2**shift ns; idle time jumps to the next timer.
            machine += ["-icount", f"shift={icount_shift},sleep=off"]
    else:
        raise ValueError(f"accel must be kvm or tcg, got {accel!r}")
    return [
        qemu,
        *machine,
        "-m", str(memory_mb),
        "-smp", str(cpus),
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display", "none",
        "-serial", "stdio",
        "-nic", "none",
        "-kernel", str(kernel.vmlinuz),
        "-initrd", str(initramfs),
        "-append", kernel_cmdline(kernel),
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={io_dir},mount_tag=edgebedio,security_model=none",
    ]  # fmt: skip


def guest_script(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None
) -> str:
    """The ``run.sh`` the guest executes: environment, working directory, command, exit code."""
    base_env = {
        "PATH": "/run/edgebed/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
        "EDGEBED_GUEST": "1",
        "EDGEBED_GUEST_OUT": GUEST_OUT_DIR,
    }
    base_env.update(env or {})
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in base_env.items())
    command = shlex.join(argv)
    io = GUEST_IO_DIR
    return f"""set -u
{exports}
mkdir -p {GUEST_OUT_DIR}
cd {shlex.quote(str(cwd))} || exit 97
echo "EDGEBED-GUEST-CMD uptime=$(cut -d' ' -f1 /proc/uptime)"
{{ {command}; echo $? > {io}/rc; }} 2>&1 | tee {io}/output.log
sync
"""


_UPTIME = re.compile(r"EDGEBED-GUEST-(\w+)(?: rc=\d+)? uptime=([0-9.]+)")


GUEST_TMPFS_DIRS = ("/tmp", "/run", "/var/tmp", "/mnt")


def hidden_by_guest_tmpfs(paths: Iterable[Path]) -> list[str]:
    """Those of ``paths`` that the guest's tmpfs mounts would hide (bound back from the host)."""
    out = []
    for p in paths:
        resolved = str(Path(p).resolve())
        if any(resolved == d or resolved.startswith(d + "/") for d in GUEST_TMPFS_DIRS):
            out.append(resolved)
    return out


def run_in_guest(
    argv: Sequence[str],
    *,
    kernel: GuestKernel | None = None,
    cwd: Path = REPO_ROOT,
    env: Mapping[str, str] | None = None,
    io_dir: Path | None = None,
    accel: str = "auto",
    timeout_s: float = 600.0,
    memory_mb: int = 1024,
    cpus: int = 1,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    icount_shift: int | None = None,
    echo: bool = False,
) -> GuestResult:
    """Boot a guest, run ``argv`` (an argument list, no shell) in ``cwd`` and power off.

    The command sees the host's files read-only and writes results to ``$EDGEBED_GUEST_OUT``
    (``io_dir/out`` on the host). ``accel`` is ``auto`` (KVM when it can boot a stock kernel,
    else TCG), ``kvm`` or ``tcg``. ``echo`` streams the guest console to stderr. qemu is killed
    after ``timeout_s`` (GuestError).
    """
    reason = guest_unavailable_reason()
    if reason:
        raise GuestError(reason)
    accel_used, accel_reason = choose_accel(accel)
    kernel = kernel or find_kernel(cache_dir)
    if kernel is None:
        raise GuestError(
            "no kernel with sch_netem found: run `python -m netem.kvmguest fetch-kernel` "
            "or apt-get install linux-image-amd64"
        )
    started = time.monotonic()
    initramfs = build_initramfs(kernel, cache_dir)
    initramfs_s = time.monotonic() - started
    if io_dir is None:
        io_dir = Path(tempfile.mkdtemp(prefix="edgebed-kvm-"))
    io_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "output.log"):
        (io_dir / stale).unlink(missing_ok=True)
    (io_dir / "run.sh").write_text(guest_script(argv, cwd=cwd, env=env))
    (io_dir / "binds").write_text("".join(f"{p}\n" for p in hidden_by_guest_tmpfs([cwd])))
    cmd = qemu_argv(
        kernel, initramfs, io_dir, memory_mb=memory_mb, cpus=cpus, accel=accel_used,
        icount_shift=icount_shift if accel_used == "tcg" else None,
    )
    boot_started = time.monotonic()
    lines: list[str] = []
    marks: list[tuple[str, float]] = []  # (marker, host seconds since qemu started)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    watchdog = threading.Timer(timeout_s, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").replace("\r", "")
            lines.append(line)
            if line.startswith("EDGEBED-"):
                marks.append((line.split()[0], time.monotonic() - boot_started))
            if echo:
                sys.stderr.write(line)
                sys.stderr.flush()
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    wall_s = time.monotonic() - boot_started
    console = "".join(lines)
    if wall_s >= timeout_s:
        raise GuestError(
            f"guest ({accel_used}) killed after {timeout_s:.0f} s; console tail:\n"
            + "".join(lines[-40:])
        )
    uptimes = {m.group(1): float(m.group(2)) for m in _UPTIME.finditer(console)}
    rc_file = io_dir / "rc"
    out_file = io_dir / "output.log"
    rc_text = rc_file.read_text().strip() if rc_file.is_file() else ""
    return GuestResult(
        returncode=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
        output=out_file.read_text(errors="replace") if out_file.is_file() else "",
        console=console,
        io_dir=io_dir,
        boot_s=uptimes.get("CMD"),
        wall_s=wall_s,
        qemu_returncode=proc.returncode,
        accel=accel_used,
        accel_reason=accel_reason,
        kernel_version=kernel.version,
        timings={
            "initramfs_s": initramfs_s,
            **{f"wall_{m.removeprefix('EDGEBED-').lower().replace('-', '_')}_s": t
               for m, t in marks},
            **{f"guest_uptime_{k.lower()}_s": v for k, v in uptimes.items()},
        },
    )


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netem.kvmguest", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("fetch-kernel", help="download + unpack Debian's stock kernel into the cache")
    check = sub.add_parser("check", help="say whether a guest can run here, how, which kernel")
    check.add_argument("--accel", choices=ACCELS, default="auto")
    run = sub.add_parser("run", help="run a command in a guest: run -- CMD ARGS...")
    run.add_argument("--accel", choices=ACCELS, default="auto")
    run.add_argument("--timeout-s", type=float, default=600.0)
    run.add_argument("--icount-shift", type=int, default=None,
                     help="tcg only: virtual clock of 2**N ns per instruction")
    run.add_argument("--memory-mb", type=int, default=1024)
    run.add_argument("--echo", action="store_true", help="stream the guest console")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.action == "fetch-kernel":
        started = time.monotonic()
        fetched = fetch_debian_kernel()
        print(f"kernel {fetched.version}: {fetched.vmlinuz} ({time.monotonic() - started:.1f} s)")
        return 0
    if args.action == "check":
        reason = guest_unavailable_reason()
        kernel = find_kernel()
        accel, why = choose_accel(args.accel)
        print(f"guest: {reason or 'ok'}")
        print(f"accel: {accel} ({why})")
        print(f"kernel: {kernel.vmlinuz if kernel else 'none with sch_netem found'}")
        return 0 if reason is None and kernel is not None else 1
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command after --")
    result = run_in_guest(
        command, accel=args.accel, timeout_s=args.timeout_s, memory_mb=args.memory_mb,
        icount_shift=args.icount_shift, echo=args.echo,
    )
    if not args.echo:
        sys.stdout.write(result.output)
    print(
        f"[guest {result.accel} rc={result.returncode} boot_s={result.boot_s} "
        f"wall_s={result.wall_s:.1f} "
        f"io_dir={result.io_dir}]",
        file=sys.stderr,
    )
    return result.returncode if result.returncode is not None else 1


if __name__ == "__main__":
    sys.exit(main())
