"""The accuracy-vs-time curve of a CPSC-DFKD run: ``metrics.jsonl`` -> ``<prefix>.json`` and ``<prefix>.png``.

    python bench/cifar_curve.py RUN_DIR/metrics.jsonl OUT/cifar10_resnet56_resnet20 [--title TEXT]

Reads what the trainer logged after every epoch (also from a run cut short by a timeout: each line is complete when
written). JSON: the teacher's accuracy, then per epoch the student's test accuracy, the epoch's training seconds and
the cumulative training seconds (evaluation time excluded). PNG: accuracy (%) against cumulative seconds, from chance
at 0 s, drawn with matplotlib when it is installed, else with a small built-in rasteriser (a grey line every 10 % and
every 30 s, the teacher dashed; no text), because the GPU machine's python may have no plotting library.
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from pathlib import Path


def curve(metrics: Path) -> dict:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    teacher = next((r["teacher_acc"] for r in records if "teacher_acc" in r), None)  # the epoch-0 line
    wall, epochs = 0.0, []
    for r in records:
        if r.get("epoch", 0) < 1:
            continue
        wall += r.get("epoch_s", 0.0)
        epochs.append({"epoch": r["epoch"], "acc": r.get("acc"), "epoch_s": r.get("epoch_s"), "wall_s": wall,
                       "images_per_s": r.get("images_per_s")})
    return {"teacher_acc": teacher, "epochs": epochs}


def _png(path: Path, pixels: list[bytearray], width: int, height: int) -> None:
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)  # filter type 0 per row, RGB

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def _raster_plot(path: Path, xs: list[float], ys: list[float], teacher: float | None = None, width: int = 640,
                 height: int = 400) -> None:
    pixels = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]
    margin, x_max = 20, max(max(xs, default=1.0), 1e-9)

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            pixels[y][3 * x:3 * x + 3] = bytes(rgb)

    def to_px(x: float, y: float) -> tuple[int, int]:
        return (margin + round(x / x_max * (width - 2 * margin)),
                height - margin - round(y / 100.0 * (height - 2 * margin)))

    for pct in range(0, 101, 10):  # horizontal grid, the axis in black
        _, py = to_px(0, pct)
        for px in range(margin, width - margin + 1):
            put(px, py, (0, 0, 0) if pct == 0 else (210, 210, 210))
    for sec in range(0, int(x_max) + 1, 30):
        px, _ = to_px(sec, 0)
        for py in range(margin, height - margin + 1):
            put(px, py, (0, 0, 0) if sec == 0 else (210, 210, 210))
    if teacher is not None:  # the teacher's accuracy, dashed
        _, py = to_px(0, teacher)
        for px in range(margin, width - margin + 1):
            if (px // 6) % 2 == 0:
                put(px, py, (90, 90, 90))
    points = [to_px(x, y) for x, y in zip(xs, ys)]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            put(round(x0 + (x1 - x0) * i / steps), round(y0 + (y1 - y0) * i / steps), (31, 119, 180))
    for px, py in points:
        for dx in range(-2, 3):
            for dy in range(-2, 3):
                put(px + dx, py + dy, (214, 39, 40))
    _png(path, pixels, width, height)


def plot(data: dict, path: Path, title: str) -> None:
    points = [(0.0, 100.0 / data["classes"])] if data.get("classes") else []  # an untrained student: chance
    points += [(e["wall_s"], 100 * e["acc"]) for e in data["epochs"] if e["acc"] is not None]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _raster_plot(path, xs, ys, None if data.get("teacher_acc") is None else 100 * data["teacher_acc"])
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(xs, ys, "o-", label="student (ResNet-20)")
    if data.get("teacher_acc") is not None:
        ax.axhline(100 * data["teacher_acc"], color="grey", ls="--", label="teacher (ResNet-56)")
    ax.set(xlabel="training time (s)", ylabel="CIFAR-10 test accuracy (%)", title=title, ylim=(0, 100),
           xlim=(0, max(xs, default=1.0) * 1.05 or 1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="the run's metrics.jsonl")
    parser.add_argument("prefix", type=Path, help="output path without suffix (its name should contain 'cifar')")
    parser.add_argument("--title", default="CPSC-DFKD, CIFAR-10, ResNet-56 -> ResNet-20")
    parser.add_argument("--extra", default="{}", help="JSON object merged into the output (command, device, ...)")
    args = parser.parse_args(argv)
    data = {"classes": 10, **curve(args.metrics), **json.loads(args.extra)}
    args.prefix.parent.mkdir(parents=True, exist_ok=True)
    args.prefix.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, args.prefix.with_suffix(".png"), args.title)
    accs = [e["acc"] for e in data["epochs"] if e["acc"] is not None]
    print(f"cifar_curve: {len(data['epochs'])} epochs, final accuracy "
          f"{'-' if not accs else f'{accs[-1]:.2%}'} -> {args.prefix}.json / .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
