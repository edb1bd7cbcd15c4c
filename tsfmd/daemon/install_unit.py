"""`tsfmd install-unit`: put the systemd unit, the sysusers file and a registry in place.

The shipped unit (packaging/systemd/tsfmd.service) names /usr/local/bin/tsfmd; the installed
copy names the tsfmd this command runs from (a venv's bin/ as often as not). Where that
installation sits in a directory the sandbox hides (/root, /home, /tmp), a drop-in binds it
back in read-only, so the shipped unit itself stays as strict as it is.

    tsfmd install-unit                 # onto this machine, then sysusers + daemon-reload
    tsfmd install-unit --root DIR      # into DIR (packaging, tests); runs nothing
    tsfmd install-unit --dry-run       # print what would be written
    tsfmd install-unit --memory-max 12G  # also a drop-in sizing the memory bound
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

#: the path the shipped unit names; replaced by the tsfmd actually installed
SHIPPED_EXECUTABLE = "/usr/local/bin/tsfmd"
UNIT = "etc/systemd/system/tsfmd.service"
DROPIN_DIR = "etc/systemd/system/tsfmd.service.d"
SYSUSERS = "etc/sysusers.d/tsfmd.conf"
REGISTRY = "etc/tsfmd/tsfmd.yaml"
#: directories the unit's ProtectHome=/PrivateTmp= hide from the daemon
HIDDEN = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
HOMES = ("/home", "/root", "/run/user")


@dataclass
class InstallFile:
    path: str  # absolute path on the target system (without --root)
    text: str
    replace: bool = True  # False: an existing file (the operator's registry) is kept
    mode: int = 0o644


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "install-unit", help="install the systemd unit, sysusers file and default registry"
    )
    parser.add_argument("--root", default="/",
                        help="install below this directory (packaging, tests); runs nothing")
    parser.add_argument("--dry-run", action="store_true", help="print, write nothing")
    parser.add_argument("--gpu", action="store_true",
                        help="also install the GPU drop-in (NVIDIA device access)")
    parser.add_argument("--memory-max", default=None, metavar="SIZE",
                        help="memory bound of the daemon, e.g. 12G or 60%% (a drop-in with "
                        "MemoryMax=SIZE and MemoryHigh= at 85%% of it)")
    parser.add_argument("--executable", default=None,
                        help="the tsfmd the unit runs (default: the one next to this Python)")
    parser.set_defaults(handler=cmd_install_unit)


#: the tsfmd package directory (this module lives in tsfmd/daemon/)
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def packaged(name: str) -> str:
    """A packaging file: from the installed package, or from the source tree."""
    here = PACKAGE_DIR
    packaged_names = {"tsfmd.service": "systemd/tsfmd.service",
                      "gpu.conf": "systemd/gpu.conf", "sysusers.conf": "sysusers.d/tsfmd.conf"}
    for path in (here / "data" / "systemd" / name,
                 here.parent / "packaging" / packaged_names[name]):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"the packaged {name} is missing from this tsfmd installation")


def tsfmd_executable() -> str:
    beside = Path(sys.executable).parent / "tsfmd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("tsfmd")
    if not found:
        raise FileNotFoundError("no tsfmd executable next to this Python nor on PATH")
    return str(Path(found).absolute())


def hidden_install_paths(executable: str) -> List[str]:
    """Directories the daemon needs that the sandbox would hide: the executable's
    environment, its base Python and the tsfmd package (editable installs)."""
    needed = {os.path.dirname(os.path.dirname(executable)), sys.prefix, sys.base_prefix,
              str(PACKAGE_DIR.parent)}
    hidden = set()
    for path in needed:
        real = os.path.realpath(path)
        if any(real == h or real.startswith(h + "/") for h in HIDDEN):
            hidden.add(real)
    # a directory inside another one already bound adds nothing
    return sorted(p for p in hidden if not any(p.startswith(q + "/") for q in hidden))


def paths_dropin(paths: List[str]) -> str:
    lines = ["# Written by `tsfmd install-unit`: tsfmd is installed where the unit's sandbox",
             "# would hide it; bind that installation back in, read-only.", "[Service]"]
    if any(any(p == h or p.startswith(h + "/") for h in HOMES) for p in paths):
        lines.append("ProtectHome=tmpfs")
    lines += [f"BindReadOnlyPaths={p}" for p in paths]
    return "\n".join(lines) + "\n"


_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def memory_dropin(size: str) -> str:
    """MemoryMax=SIZE and MemoryHigh= at 85% of it: the kernel reclaims and throttles before
    it kills. SIZE as systemd reads it: bytes with K/M/G/T (base 1024), or a % of RAM."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", size.strip().upper())
    percent = re.fullmatch(r"(\d+(?:\.\d+)?)%", size.strip())
    if percent and 0 < float(percent.group(1)) <= 100:
        high = f"{float(percent.group(1)) * 0.85:g}%"
    elif match and float(match.group(1)) > 0:
        high = str(int(float(match.group(1)) * _UNITS[match.group(2)] * 0.85))
    else:
        raise ValueError(f"--memory-max: not a size like 12G, 800M or 60%: {size!r}")
    return (f"# Written by `tsfmd install-unit --memory-max {size}`: the memory bound sized to\n"
            "# this machine's models (README: Memory). Above MemoryHigh= the kernel reclaims\n"
            "# and throttles tsfmd; at MemoryMax= it OOM-kills it (logged as such).\n"
            f"[Service]\nMemoryMax={size.strip()}\nMemoryHigh={high}\n")


def plan(executable: str, gpu: bool = False, memory_max: Optional[str] = None
         ) -> List[InstallFile]:
    from tsfmd.core.registry import embedded_registry

    unit = packaged("tsfmd.service").replace(SHIPPED_EXECUTABLE, executable)
    files = [
        InstallFile("/" + UNIT, unit),
        InstallFile("/" + SYSUSERS, packaged("sysusers.conf")),
        InstallFile("/" + REGISTRY, Path(embedded_registry()).read_text(encoding="utf-8"),
                    replace=False),
    ]
    hidden = hidden_install_paths(executable)
    if hidden:
        files.append(InstallFile(f"/{DROPIN_DIR}/10-install-paths.conf", paths_dropin(hidden)))
    if gpu:
        files.append(InstallFile(f"/{DROPIN_DIR}/gpu.conf", packaged("gpu.conf")))
    if memory_max:
        files.append(InstallFile(f"/{DROPIN_DIR}/20-memory.conf", memory_dropin(memory_max)))
    return files


def cmd_install_unit(args) -> int:
    try:
        executable = args.executable or tsfmd_executable()
        files = plan(executable, args.gpu, args.memory_max)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tsfmd install-unit: {exc}", file=sys.stderr)
        return 1
    root = Path(args.root)
    for item in files:
        target = root / item.path.lstrip("/")
        if target.exists() and not item.replace:
            print(f"kept     {target} (already there)")
            continue
        if args.dry_run:
            indented = "".join(f"    {line}\n" for line in item.text.splitlines())
            print(f"would write {target}:\n{indented}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        existed = target.exists()
        target.write_text(item.text, encoding="utf-8")
        target.chmod(item.mode)
        print(f"{'replaced' if existed else 'wrote   '} {target}")
    if args.dry_run or os.path.realpath(root) != "/":
        return 0
    return _activate()


def _activate() -> int:
    """Create the user and tell systemd about the unit, on this machine."""
    steps = [["systemd-sysusers", "/" + SYSUSERS]]
    if Path("/run/systemd/system").is_dir():  # systemd is PID 1 here
        steps.append(["systemctl", "daemon-reload"])
    for step in steps:
        if shutil.which(step[0]) is None:
            print(f"tsfmd install-unit: {step[0]} not found; run `{' '.join(step)}` yourself",
                  file=sys.stderr)
            return 1
        result = subprocess.run(step)
        if result.returncode != 0:
            print(f"tsfmd install-unit: `{' '.join(step)}` failed ({result.returncode})",
                  file=sys.stderr)
            return 1
    print("next: edit /etc/tsfmd/tsfmd.yaml, `tsfmd check`, then `systemctl enable --now tsfmd`")
    return 0
