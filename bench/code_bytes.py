"""The shipped code's bytes, per part of the tree: the sources as written against golf.minify's form, each packed as
train_gpt.py packs them (tar, then xz 9e) and, where the package is installed, with brotli 11 instead.

    python -m bench.code_bytes [--root CHECKOUT]

Columns: raw bytes, the part's tar alone compressed (parts compress better together: the last row is the whole
tree in one tar, what train_gpt.py carries), for the sources as written and minified.
"""

from __future__ import annotations

import argparse
import lzma
from pathlib import Path

from bench.common import brotli
from golf import bundle, minify
from golf.bundle import tar_of


def part_of(name: str) -> str:
    if name.startswith("python/golf/"):
        return "python/golf"
    return name.split("/")[0] if "/" in name else "build files"


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=9 | lzma.PRESET_EXTREME)


def sizes(files: list[tuple[str, bytes]]) -> tuple[int, int, int | None]:
    packed = tar_of(files)
    return (sum(len(d) for _, d in files), len(xz(packed)),
            len(brotli.compress(packed, quality=11, lgwin=24)) if brotli else None)


def _n(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.code_bytes", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="the checkout (default: this one)")
    args = p.parse_args(argv)
    shipped = bundle.shipped_files(args.root)
    written = [(n, path.read_bytes()) for n, path in shipped]
    small = [(n, minify.shipped_text(n, d.decode("utf-8")).encode("utf-8")) for n, d in written]
    parts = sorted({part_of(n) for n, _ in written})
    fmt = "| {} | {:,} | {:,} | {} | {:,} | {:,} | {} | {:.2f}× |"
    print("| part | raw | xz | brotli | minified raw | minified xz | minified brotli | xz ratio |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [(part, [f for f in written if part_of(f[0]) == part], [f for f in small if part_of(f[0]) == part])
            for part in parts] + [("all, one tar", written, small)]
    for part, a, b in rows:
        (ra, xa, ba), (rb, xb, bb) = sizes(a), sizes(b)
        print(fmt.format(part, ra, xa, _n(ba), rb, xb, _n(bb), xa / xb))
    packed = len(xz(tar_of(small)))
    print(f"\nthe minified tree: {packed:,} bytes of xz ({packed * 5 // 4:,} in base85); train_gpt.py, which "
          f"carries it as latin-1, with the presets' config: {bundle.code_bytes(root=args.root)['bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
