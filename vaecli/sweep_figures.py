"""Comparison plots of a sweep (plotnine) and montages of its members' images (PIL)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from vaecli.figures import save_plot

MONTAGE_LABEL = 22  # pixels of label band above each cell and left of each row


def axes(table: pd.DataFrame, swept: list[str]) -> tuple[str, str]:
    """(colour/column key, facet/row key): beta and latent_size when swept, else the swept keys."""
    varying = [key for key in swept if key in table and table[key].nunique(dropna=True) > 1]
    colour = "beta" if "beta" in varying else (varying[0] if varying else "beta")
    rest = [key for key in varying if key != colour]
    facet = "latent_size" if "latent_size" in rest else (rest[0] if rest else "latent_size")
    return colour, facet


def draw_all(sweep_dir: Path, table: pd.DataFrame, long: pd.DataFrame, swept: list[str]) -> list[Path]:
    colour, facet = axes(table, swept)
    written: list[Path] = []
    done = table[table.status == "ok"] if "status" in table else table
    if not long.empty:
        written.append(loss_curves(long, sweep_dir / "loss_curves.png", colour, facet))
    if not done.empty and "test_kl_nats" in done:
        written.append(rate_distortion(done, sweep_dir / "rate_distortion.png", colour, facet))
        written.append(final_against(done, sweep_dir / "neg_elbo.png", colour, facet))
    for image in ("reconstructions.png", "traversal.png"):
        path = montage(sweep_dir, table, image, colour, facet)
        if path is not None:
            written.append(path)
    return written


def _factor(frame: pd.DataFrame, key: str) -> pd.Categorical:
    """The key's values as labels, ordered by value (so 2 comes before 10)."""
    values = sorted(frame[key].dropna().unique(), key=_sort_key)
    labels = [str(value) for value in values]
    return pd.Categorical(frame[key].map(str), categories=labels, ordered=True)


def _sort_key(value):
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def loss_curves(long: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    from plotnine import aes, facet_wrap, geom_line, ggplot, labs, scale_x_log10, scale_y_log10, theme_bw

    frame = long[long.split == "train"].copy()
    frame["colour"] = _factor(frame, colour)
    frame = frame[frame["loss"] > 0]
    plot = (
        ggplot(frame, aes("step", "loss", colour="colour", group="member"))
        + geom_line()
        + scale_x_log10()
        + scale_y_log10()
        + labs(colour=colour, y="train loss (seed units)", title="loss curves")
        + theme_bw()
    )
    if facet in frame and frame[facet].nunique() > 1:
        plot += facet_wrap(f"~{facet}", labeller="label_both")
    save_plot(plot, path, width=8, height=5)
    return path


def rate_distortion(done: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    from plotnine import aes, geom_point, geom_text, ggplot, labs, scale_x_continuous, scale_y_continuous, theme_bw

    frame = done.copy()
    frame["colour"] = _factor(frame, colour)
    frame["shape"] = _factor(frame, facet) if facet in frame else ""
    frame["label"] = [f"{colour}={c}, {facet}={f}" for c, f in zip(frame[colour], frame.get(facet, ""))]
    plot = (
        ggplot(frame, aes("test_kl_nats", "test_recon_nats", colour="colour", shape="shape"))
        + geom_point(size=3)
        + geom_text(aes(label="label"), size=6, va="bottom", nudge_y=0.6, show_legend=False)
        + scale_x_continuous(expand=(0.12, 0))
        + scale_y_continuous(expand=(0.08, 0))
        + labs(
            x="rate: KL (nats per image, test)",
            y="distortion: reconstruction (nats per image, test)",
            colour=colour,
            shape=facet,
            title="rate-distortion plane",
        )
        + theme_bw()
    )
    save_plot(plot, path, width=8, height=6)
    return path


def final_against(done: pd.DataFrame, path: Path, colour: str, facet: str) -> Path:
    from plotnine import aes, geom_line, geom_point, ggplot, labs, theme_bw

    frame = done.copy()
    frame["x"] = _factor(frame, colour)
    frame["series"] = _factor(frame, facet) if facet in frame else ""
    plot = (
        ggplot(frame, aes("x", "test_neg_elbo_nats", colour="series", group="series"))
        + geom_line()
        + geom_point(size=2)
        + labs(x=colour, y="-ELBO (nats per image, test)", colour=facet, title=f"final test -ELBO against {colour}")
        + theme_bw()
    )
    save_plot(plot, path, width=7, height=4.5)
    return path


def montage(sweep_dir: Path, table: pd.DataFrame, image_name: str, colour: str, facet: str) -> Path | None:
    """Each member's image in a grid: ``colour`` key along columns, ``facet`` key down rows."""
    cells = {}
    for _, row in table.iterrows():
        image_path = sweep_dir / str(row.get("member", "")) / image_name
        if row.get("member") and image_path.is_file():
            cells[(row.get(facet), row.get(colour))] = Image.open(image_path).convert("RGB")
    if not cells:
        return None
    rows = sorted({key[0] for key in cells}, key=_sort_key)
    cols = sorted({key[1] for key in cells}, key=_sort_key)
    width = max(image.width for image in cells.values())
    height = max(image.height for image in cells.values())
    gap = 6
    canvas = Image.new(
        "RGB", (MONTAGE_LABEL * 4 + len(cols) * (width + gap), MONTAGE_LABEL + len(rows) * (height + gap)), "white"
    )
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for j, col in enumerate(cols):
        draw.text((MONTAGE_LABEL * 4 + j * (width + gap), 4), f"{colour}={col}", fill="black", font=font)
    for i, row_value in enumerate(rows):
        top = MONTAGE_LABEL + i * (height + gap)
        draw.text((2, top + height // 2 - 6), f"{facet}={row_value}", fill="black", font=font)
        for j, col in enumerate(cols):
            if (row_value, col) in cells:
                canvas.paste(cells[(row_value, col)], (MONTAGE_LABEL * 4 + j * (width + gap), top))
    path = sweep_dir / f"montage_{image_name}"
    canvas.save(path)
    return path
