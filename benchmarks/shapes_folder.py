"""A folder of colour images to try `data=folder` on: shapes drawn with Pillow, one subfolder per kind.

Each image is a `size` x `size` PNG on a coloured background with one shape (ellipse, rectangle,
triangle) of random colour, size and position; the subfolders (`ellipse/`, `rectangle/`,
`triangle/`) are the labels `vae embed` colours by. Deterministic for a seed.

Run:  python benchmarks/shapes_folder.py DIR [--count 3000] [--size 64] [--seed 0] [--test 300]
      (--test N also writes N images under DIR/test/, the held-out split `data=folder` then uses)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

KINDS = ("ellipse", "rectangle", "triangle")


def shape_image(rng: random.Random, kind: str, size: int) -> Image.Image:
    """One picture: a background colour, then a shape at least a quarter of the canvas wide."""
    background = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    colour = tuple(rng.randrange(256) for _ in range(3))
    width, height = rng.randint(size // 4, size * 3 // 4), rng.randint(size // 4, size * 3 // 4)
    left, top = rng.randint(0, size - width), rng.randint(0, size - height)
    box = (left, top, left + width, top + height)
    if kind == "ellipse":
        draw.ellipse(box, fill=colour)
    elif kind == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left, top + height), (left + width // 2, top), (left + width, top + height)], fill=colour)
    return image


def write_shapes(folder: Path, count: int, size: int = 64, seed: int = 0, test: int = 0) -> Path:
    """``count`` images under ``folder/<kind>/`` (and ``test`` more under ``folder/test/<kind>/``)."""
    rng = random.Random(seed)
    for part, number in (("", count), ("test", test)):
        for index in range(number):
            kind = KINDS[index % len(KINDS)]
            target = folder / part / kind
            target.mkdir(parents=True, exist_ok=True)
            shape_image(rng, kind, size).save(target / f"{index:05d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", type=int, default=0)
    args = parser.parse_args()
    write_shapes(args.folder, args.count, args.size, args.seed, args.test)
    print(f"wrote {args.count} images ({args.test} under test/) to {args.folder}")


if __name__ == "__main__":
    main()
